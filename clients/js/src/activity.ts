// What a browser tab reports about its human: `active` after input,
// `idle` after a while without it, `background` while hidden (the Page
// Visibility API). Outside a browser the app says it (`setActivity`).

import type { Activity } from "./types.js";

const INPUT = ["mousemove", "mousedown", "keydown", "pointerdown", "scroll", "touchstart", "wheel"];

/** Watches a browser tab; calls `changed` when its activity changes. */
export class BrowserActivity {
  private lastInput = Date.now();
  private current: Activity;
  private timer: ReturnType<typeof setInterval> | undefined;
  private readonly onInput = () => {
    this.lastInput = Date.now();
    this.check();
  };
  private readonly onVisibility = () => this.check();

  constructor(private idleAfterMs: number, private readonly changed: (a: Activity) => void) {
    this.current = this.read();
    for (const e of INPUT) window.addEventListener(e, this.onInput, { passive: true });
    window.addEventListener("focus", this.onInput);
    document.addEventListener("visibilitychange", this.onVisibility);
    this.timer = setInterval(() => this.check(), 1000);
  }

  /** Whether this runs in a browser with a document to watch. */
  static available(): boolean {
    return typeof window !== "undefined" && typeof document !== "undefined" && typeof window.addEventListener === "function";
  }

  get activity(): Activity {
    return this.current;
  }

  /** The idle threshold the node names (capped at a minute, so a tab left alone says so soon). */
  setIdleAfter(ms: number): void {
    this.idleAfterMs = Math.min(ms, 60_000);
  }

  private read(): Activity {
    if (document.hidden) return "background";
    return Date.now() - this.lastInput > this.idleAfterMs ? "idle" : "active";
  }

  private check(): void {
    const a = this.read();
    if (a !== this.current) {
      this.current = a;
      this.changed(a);
    }
  }

  stop(): void {
    for (const e of INPUT) window.removeEventListener(e, this.onInput);
    window.removeEventListener("focus", this.onInput);
    document.removeEventListener("visibilitychange", this.onVisibility);
    clearInterval(this.timer);
  }
}
