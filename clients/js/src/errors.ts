/** A refusal from the node (`{ code, message, field? }` of docs/protocol.md), or a
 * client-side failure (`code: "timeout"`, `"closed"`). */
export class PresenceError extends Error {
  readonly code: string;
  readonly field?: string;

  constructor(code: string, message: string, field?: string) {
    super(message);
    this.name = "PresenceError";
    this.code = code;
    this.field = field;
  }

  /** From an error ack's `error` object. */
  static from(e: { code?: string; message?: string; field?: string } | undefined): PresenceError {
    return new PresenceError(e?.code ?? "internal", e?.message ?? "unknown error", e?.field);
  }
}
