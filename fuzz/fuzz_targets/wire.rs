//! Every client payload decoder on arbitrary bytes: whatever a socket sends
//! (once Socket.IO has parsed it as JSON), decoding returns a value or a
//! `WireError` with a code, a message and a body, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presence_core::{Limits, UserId};
use presence_node::wire;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let limits = Limits {
        max_state_bytes: 64,
        max_meta_bytes: 64,
        ..Limits::default()
    };
    let sub = UserId::new("fuzz-user").ok();
    let errors = [
        wire::hello(&v, &limits, None).err(),
        wire::hello(&v, &limits, sub.as_ref()).err(),
        wire::join(&v, &limits).err(),
        wire::heartbeat(&v).err(),
        wire::state(&v, &limits).err(),
        wire::signal(&v, &limits).err(),
        wire::leave(&v).err(),
    ];
    for e in errors.into_iter().flatten() {
        assert!(!e.message.is_empty());
        let body = e.body();
        assert_eq!(body["ok"], Value::Bool(false));
        assert_eq!(body["error"]["code"], Value::from(e.code.as_str()));
    }
});
