//! The Lua scripts of `lua/`: loading them, running them, and the typed
//! boundary every call goes through.
//!
//! On Redis 7 and later the scripts are one function library (`FUNCTION
//! LOAD`, run with `FCALL`): the helpers of `lua/lib/prelude.lua` are
//! defined once when the library loads instead of on every call, and the
//! timings are decoded once (see `timings` in the prelude). On Redis 6, or
//! where `FUNCTION` is not allowed (an ACL), each script runs with
//! `EVALSHA`, the prelude prepended. Either way a call that finds its code
//! missing (a restarted or failed-over Redis) loads it again and runs once
//! more.
//!
//! Each script has one argument type (a struct with named fields that
//! implements [`ScriptCall`]: its keys, its `ARGV`, its reply type) and one
//! reply type; the modules [`session`](super::session_scripts),
//! [`room`](super::room_scripts) and [`index`](super::index_scripts) hold
//! them. No caller builds a positional vector or reads an untyped reply.

use std::sync::atomic::{AtomicBool, Ordering};

use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Value;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::conn::unavailable;
use super::keys::Keys;
use super::route::Route;
use crate::error::StoreError;

/// The helpers every session script uses.
const PRELUDE: &str = include_str!("../../../../lua/lib/prelude.lua");

/// One script of `lua/`: its text, whether it needs the prelude, its
/// `EVALSHA` form and its name in the function library.
pub(super) struct Lua {
    /// `EVALSHA` form: the script, after the prelude if it needs it.
    script: Script,
    /// The function's name in the library (`presence_<version>_<script>`).
    function: String,
}

/// A script read at build time: its name (the file's, without `.lua`), its
/// text, and whether it runs after the prelude.
struct Source {
    name: &'static str,
    text: &'static str,
    prelude: bool,
    /// Takes keys of many slots (of one master) on a Cluster: the function
    /// is registered with the flag `allow-cross-slot-keys`.
    cross_slot: bool,
}

/// A session script: runs after `lua/lib/prelude.lua` (the lifecycle rules).
macro_rules! with_prelude {
    ($name:literal) => {
        Source {
            name: $name,
            text: include_str!(concat!("../../../../lua/", $name, ".lua")),
            prelude: true,
            cross_slot: false,
        }
    };
}

/// A script that stands alone.
macro_rules! alone {
    ($name:literal) => {
        Source {
            name: $name,
            text: include_str!(concat!("../../../../lua/", $name, ".lua")),
            prelude: false,
            cross_slot: false,
        }
    };
    ($name:literal, cross_slot) => {
        Source {
            name: $name,
            text: include_str!(concat!("../../../../lua/", $name, ".lua")),
            prelude: false,
            cross_slot: true,
        }
    };
}

/// Every script, compiled into the binary (a node always runs the scripts it
/// was built with; their SHA-1 and the library's version are computed once).
pub(super) struct Scripts {
    pub claim: Lua,
    pub declare: Lua,
    pub join: Lua,
    pub heartbeat: Lua,
    pub beats: Lua,
    pub state: Lua,
    pub leave: Lua,
    pub disconnect: Lua,
    pub expire: Lua,
    pub room_put: Lua,
    pub room_del: Lua,
    pub room_read: Lua,
    pub room_page: Lua,
    pub room_due: Lua,
    pub rooms_settle: Lua,
    pub user_put: Lua,
    pub user_del: Lua,
    pub node_put: Lua,
    pub nodes_read: Lua,
    pub lease: Lua,
    pub lease_release: Lua,
    pub intent_put: Lua,
    pub intent_reserve: Lua,
    pub intent_resolve: Lua,
    /// The function library's code (`#!lua name=presence_<version>`).
    library: String,
    /// Whether calls go through the library (`FCALL`), decided by [`Scripts::load`].
    functions: AtomicBool,
}

/// The library's name and the prefix of its functions. The version is a
/// hash of the code: nodes built from other scripts (a rolling upgrade)
/// load a library of their own beside this one instead of replacing it
/// under the feet of the nodes that still run the old code.
fn library_name(body: &str) -> String {
    format!("presence_{}", &fred::util::sha1_hash(body)[..12])
}

impl Scripts {
    pub fn new() -> Self {
        let sources = [
            with_prelude!("claim"),
            with_prelude!("declare"),
            with_prelude!("join"),
            with_prelude!("heartbeat"),
            alone!("beats", cross_slot),
            with_prelude!("state"),
            with_prelude!("leave"),
            with_prelude!("disconnect"),
            with_prelude!("expire"),
            alone!("room_put"),
            alone!("room_del"),
            alone!("room_read"),
            alone!("room_page"),
            alone!("room_due"),
            alone!("rooms_settle"),
            with_prelude!("user_put"),
            with_prelude!("user_del"),
            alone!("node_put"),
            alone!("nodes_read"),
            alone!("lease"),
            alone!("lease_release"),
            alone!("intent_put"),
            alone!("intent_reserve"),
            alone!("intent_resolve"),
        ];
        // The library: the prelude once, then each script as the body of a
        // function whose parameters are named as a script's globals are
        // (`KEYS`, `ARGV`), so that one text serves both forms.
        let mut body = String::from(PRELUDE);
        for s in &sources {
            let flags = if s.cross_slot {
                "{ 'allow-cross-slot-keys' }"
            } else {
                "{}"
            };
            body.push_str(&format!(
                "\nredis.register_function{{ function_name = '%FN%_{}', flags = {flags}, \
                 callback = function(KEYS, ARGV)\n{}\nend }}\n",
                s.name, s.text
            ));
        }
        let name = library_name(&body);
        let library = format!("#!lua name={name}\n{}", body.replace("%FN%", &name));
        let lua = sources.map(|s| Lua {
            script: Script::from_lua(if s.prelude {
                format!("{PRELUDE}\n{}", s.text)
            } else {
                s.text.to_owned()
            }),
            function: format!("{name}_{}", s.name),
        });
        // In the order of `sources` (rustfmt leaves a long slice pattern on one line).
        #[rustfmt::skip]
        let [
            claim, declare, join, heartbeat, beats, state, leave, disconnect, expire,
            room_put, room_del, room_read, room_page, room_due, rooms_settle,
            user_put, user_del, node_put, nodes_read, lease, lease_release,
            intent_put, intent_reserve, intent_resolve,
        ] = lua;
        Self {
            claim,
            declare,
            join,
            heartbeat,
            beats,
            state,
            leave,
            disconnect,
            expire,
            room_put,
            room_del,
            room_read,
            room_page,
            room_due,
            rooms_settle,
            user_put,
            user_del,
            node_put,
            nodes_read,
            lease,
            lease_release,
            intent_put,
            intent_reserve,
            intent_resolve,
            library,
            functions: AtomicBool::new(false),
        }
    }

    fn all(&self) -> [&Lua; 24] {
        [
            &self.claim,
            &self.declare,
            &self.join,
            &self.heartbeat,
            &self.beats,
            &self.state,
            &self.leave,
            &self.disconnect,
            &self.expire,
            &self.room_put,
            &self.room_del,
            &self.room_read,
            &self.room_page,
            &self.room_due,
            &self.rooms_settle,
            &self.user_put,
            &self.user_del,
            &self.node_put,
            &self.nodes_read,
            &self.lease,
            &self.lease_release,
            &self.intent_put,
            &self.intent_reserve,
            &self.intent_resolve,
        ]
    }

    /// Loads the function library on every master (on Cluster, each master
    /// holds its own copy; replicas get it from their master). If a master
    /// refuses it (Redis 6 has no `FUNCTION`; an ACL may deny it), or
    /// `functions` is false, every script is `SCRIPT LOAD`ed instead and
    /// calls use `EVALSHA`.
    pub async fn load(&self, route: &Route, functions: bool) -> Result<(), StoreError> {
        let masters = route.masters();
        let mut refused = None;
        if functions {
            for master in &masters {
                if let Err(e) = master.function_load::<Value, _>(true, &self.library).await {
                    // Unreachable says nothing about what the server supports.
                    if let err @ StoreError::Unavailable(_) = unavailable(e.clone()) {
                        return Err(err);
                    }
                    refused = Some(e);
                    break;
                }
            }
        }
        if functions && refused.is_none() {
            self.functions.store(true, Ordering::Relaxed);
            return Ok(());
        }
        if let Some(e) = refused {
            tracing::warn!(
                error = %e,
                "Redis refused FUNCTION LOAD: the scripts run with EVALSHA (slower: each call defines the helpers again)"
            );
        }
        for master in &masters {
            for s in self.all() {
                s.script.load(master).await.map_err(unavailable)?;
            }
        }
        Ok(())
    }

    /// Whether calls go through the function library.
    pub fn uses_functions(&self) -> bool {
        self.functions.load(Ordering::Relaxed)
    }

    /// Runs one call and decodes its reply.
    pub async fn run<C: ScriptCall>(
        &self,
        route: &Route,
        keys: &Keys,
        call: C,
    ) -> Result<C::Reply, StoreError> {
        let lua = C::script(self);
        let at = call.route_key(keys);
        let input = (at, call.keys(keys), call.args(keys));
        let v: Value = if self.uses_functions() {
            let library = self.library.as_str();
            route
                .on_key_with(input, routing_key, |c, (_, k, args)| async move {
                    fcall_with_reload(&c, library, &lua.function, k, args).await
                })
                .await?
        } else {
            route
                .on_key_with(input, routing_key, |c, (_, k, args)| async move {
                    lua.script.evalsha_with_reload(&c, k, args).await
                })
                .await?
        };
        C::Reply::decode(v)
    }
}

/// `FCALL`; when the server does not have the function (restarted without
/// persistence, a replica promoted before the library reached it, a master
/// added to a cluster), loads the library there and calls once more.
async fn fcall_with_reload(
    c: &Client,
    library: &str,
    function: &str,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<Value, fred::error::Error> {
    match c.fcall(function, keys.clone(), args.clone()).await {
        Err(e) if e.details().contains("Function not found") => {
            c.function_load::<Value, _>(true, library).await?;
            c.fcall(function, keys, args).await
        }
        other => other,
    }
}

/// The key that says where a call runs: the one it names for that, else
/// the first of its keys (every key of a call shares one slot).
fn routing_key(input: &(Option<String>, Vec<String>, Vec<String>)) -> &str {
    match &input.0 {
        Some(k) => k,
        None => input.1.first().map(String::as_str).unwrap_or_default(),
    }
}

/// One call of one script: which script, its keys, its `ARGV` (in the order
/// of the script's header), and the type of its reply.
pub(super) trait ScriptCall {
    /// What the script answers.
    type Reply: Decode;
    /// The script.
    fn script(scripts: &Scripts) -> &Lua;
    /// `KEYS`.
    fn keys(&self, keys: &Keys) -> Vec<String>;
    /// The key whose server runs the call, for a call that names its keys
    /// in `ARGV` (default: the first of `KEYS`).
    fn route_key(&self, _keys: &Keys) -> Option<String> {
        None
    }
    /// `ARGV` (channel names, too, are built from `keys`).
    fn args(self, keys: &Keys) -> Vec<String>;
}

/// A reply type, read from what the script returned.
pub(super) trait Decode: Sized {
    fn decode(v: Value) -> Result<Self, StoreError>;
}

/// A script's reply that is a JSON text, as `T`.
pub(super) fn json<T: DeserializeOwned>(script: &str, v: Value) -> Result<T, StoreError> {
    let text = v
        .as_str()
        .ok_or_else(|| StoreError::Internal(format!("{script} returned no text")))?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Internal(format!("bad reply of {script}: {text}: {e}")))
}

/// A script's reply that is an integer.
pub(super) fn integer(script: &str, v: Value) -> Result<i64, StoreError> {
    v.as_i64()
        .ok_or_else(|| StoreError::Internal(format!("{script} returned no integer")))
}

/// Why a session script changed nothing (`{ err = ... }` in the scripts;
/// see `fence` in lua/lib/prelude.lua).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "err", rename_all = "snake_case")]
pub(super) enum Refusal {
    /// No such session, or it was removed and this caller may claim it again.
    NoSession,
    /// Another connection owns the session.
    StaleEpoch {
        /// The session's current epoch.
        current: u64,
    },
    /// The session belongs to another user.
    Forbidden,
    /// The session is in as many rooms as allowed.
    TooManyRooms {
        /// The limit the script applied.
        limit: usize,
    },
    /// The session is not in the room named in the call.
    NotJoined,
    /// The session changed since the caller read it (state.lua's compare-and-set).
    Retry,
    /// The id is of a session the moderation API ended.
    Kicked,
}

/// A session script's reply: what it did, or why it did nothing.
pub(super) type Fenced<T> = Result<T, Refusal>;

impl<T: DeserializeOwned> Decode for Fenced<T> {
    fn decode(v: Value) -> Result<Self, StoreError> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            Refused(Refusal),
            Done(T),
        }
        Ok(match json::<Either<T>>("a session script", v)? {
            Either::Refused(r) => Err(r),
            Either::Done(t) => Ok(t),
        })
    }
}

/// Lua's cjson encodes an empty table as `{}`: read it as an empty list.
pub(super) fn list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum L<T> {
        List(Vec<T>),
        Empty(#[allow(dead_code)] serde_json::Map<String, serde_json::Value>),
    }
    Ok(match L::deserialize(d)? {
        L::List(v) => v,
        L::Empty(_) => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Done {
        #[serde(rename = "v")]
        version: u64,
        #[serde(default, deserialize_with = "list")]
        puts: Vec<u8>,
    }

    fn fenced(text: &str) -> Fenced<Done> {
        Fenced::<Done>::decode(Value::from(text)).unwrap()
    }

    #[test]
    fn refusals_are_typed_variants() {
        assert_eq!(fenced(r#"{"err":"no_session"}"#), Err(Refusal::NoSession));
        assert_eq!(
            fenced(r#"{"current":7,"err":"stale_epoch"}"#),
            Err(Refusal::StaleEpoch { current: 7 })
        );
        assert_eq!(
            fenced(r#"{"err":"too_many_rooms","limit":3}"#),
            Err(Refusal::TooManyRooms { limit: 3 })
        );
        assert_eq!(fenced(r#"{"err":"retry"}"#), Err(Refusal::Retry));
        assert_eq!(
            fenced(r#"{"ok":true,"v":4,"puts":{}}"#),
            Ok(Done {
                version: 4,
                puts: vec![]
            })
        );
        assert_eq!(
            fenced(r#"{"ok":true,"v":4,"puts":[1,2]}"#),
            Ok(Done {
                version: 4,
                puts: vec![1, 2]
            })
        );
    }

    #[test]
    fn an_unknown_refusal_or_shape_is_an_internal_error() {
        for text in [r#"{"err":"what"}"#, r#"{"ok":true}"#, "not json"] {
            let e = Fenced::<Done>::decode(Value::from(text)).unwrap_err();
            assert!(matches!(e, StoreError::Internal(_)), "{text}: {e:?}");
        }
    }
}
