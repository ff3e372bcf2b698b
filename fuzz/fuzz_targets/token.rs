//! The handshake token check on arbitrary input: a random string (or a
//! random JSON auth payload) is refused with a reason, never accepted and
//! never a panic.
#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use presence_node::auth::Verifier;
use presence_node::config::Config;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static VERIFIER: Verifier = Verifier::from_config(&Config::parse_from([
            "presence-node",
            "--jwt-secret",
            "fuzz-secret-0123456789abcdef-0123456789",
        ]))
        .expect("config")
        .expect("auth on");
    }
    let auth = match serde_json::from_slice::<Value>(data) {
        Ok(v) => v,
        Err(_) => json!({ "token": String::from_utf8_lossy(data) }),
    };
    VERIFIER.with(|v| {
        let r = v.verify(Some(&auth));
        assert!(r.is_err(), "a random token was accepted: {auth}");
        assert!(r.unwrap_err().to_string().starts_with("unauthorized: "));
    });
});
