//! The Lua scripts of `lua/`: loading them, running them with `EVALSHA`
//! (loaded again after a `NOSCRIPT`, as a restarted or failed-over Redis
//! answers), and the typed boundary every call goes through.
//!
//! Each script has one argument type (a struct with named fields that
//! implements [`ScriptCall`]: its keys, its `ARGV`, its reply type) and one
//! reply type; the modules [`session`](super::session_scripts),
//! [`room`](super::room_scripts) and [`index`](super::index_scripts) hold
//! them. No caller builds a positional vector or reads an untyped reply.

use fred::types::scripts::Script;
use fred::types::Value;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::conn::unavailable;
use super::keys::Keys;
use super::route::Route;
use crate::error::StoreError;

/// A session script: `lua/lib/prelude.lua` (the lifecycle rules) followed by
/// the script itself.
macro_rules! with_prelude {
    ($name:literal) => {
        concat!(
            include_str!("../../../../lua/lib/prelude.lua"),
            "\n",
            include_str!(concat!("../../../../lua/", $name))
        )
    };
}

/// A script that stands alone.
macro_rules! alone {
    ($name:literal) => {
        include_str!(concat!("../../../../lua/", $name))
    };
}

/// Every script, compiled into the binary (a node always runs the scripts it
/// was built with; their SHA-1 is computed once).
pub(super) struct Scripts {
    pub claim: Script,
    pub join: Script,
    pub heartbeat: Script,
    pub state: Script,
    pub leave: Script,
    pub disconnect: Script,
    pub expire: Script,
    pub room_put: Script,
    pub room_del: Script,
    pub room_read: Script,
    pub room_page: Script,
    pub room_due: Script,
    pub rooms_settle: Script,
    pub user_put: Script,
    pub user_del: Script,
    pub node_put: Script,
    pub nodes_read: Script,
    pub lease: Script,
    pub lease_release: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            claim: Script::from_lua(with_prelude!("claim.lua")),
            join: Script::from_lua(with_prelude!("join.lua")),
            heartbeat: Script::from_lua(with_prelude!("heartbeat.lua")),
            state: Script::from_lua(with_prelude!("state.lua")),
            leave: Script::from_lua(with_prelude!("leave.lua")),
            disconnect: Script::from_lua(with_prelude!("disconnect.lua")),
            expire: Script::from_lua(with_prelude!("expire.lua")),
            room_put: Script::from_lua(alone!("room_put.lua")),
            room_del: Script::from_lua(alone!("room_del.lua")),
            room_read: Script::from_lua(alone!("room_read.lua")),
            room_page: Script::from_lua(alone!("room_page.lua")),
            room_due: Script::from_lua(alone!("room_due.lua")),
            rooms_settle: Script::from_lua(alone!("rooms_settle.lua")),
            user_put: Script::from_lua(alone!("user_put.lua")),
            user_del: Script::from_lua(alone!("user_del.lua")),
            node_put: Script::from_lua(alone!("node_put.lua")),
            nodes_read: Script::from_lua(alone!("nodes_read.lua")),
            lease: Script::from_lua(alone!("lease.lua")),
            lease_release: Script::from_lua(alone!("lease_release.lua")),
        }
    }

    fn all(&self) -> [&Script; 19] {
        [
            &self.claim,
            &self.join,
            &self.heartbeat,
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
        ]
    }

    /// `SCRIPT LOAD`s every script (on Cluster, on every master).
    pub async fn load(&self, route: &Route) -> Result<(), StoreError> {
        for master in route.masters() {
            for s in self.all() {
                s.load(&master).await.map_err(unavailable)?;
            }
        }
        Ok(())
    }

    /// Runs one call and decodes its reply.
    pub async fn run<C: ScriptCall>(
        &self,
        route: &Route,
        keys: &Keys,
        call: C,
    ) -> Result<C::Reply, StoreError> {
        let script = C::script(self);
        let input = (call.keys(keys), call.args(keys));
        let v: Value = route
            .on_key_with(input, first_key, |c, (k, args)| async move {
                script.evalsha_with_reload(&c, k, args).await
            })
            .await?;
        C::Reply::decode(v)
    }
}

/// The first of a call's keys: every key of a call shares one slot, so it
/// says where the call runs.
fn first_key(input: &(Vec<String>, Vec<String>)) -> &str {
    input.0.first().map(String::as_str).unwrap_or_default()
}

/// One call of one script: which script, its keys, its `ARGV` (in the order
/// of the script's header), and the type of its reply.
pub(super) trait ScriptCall {
    /// What the script answers.
    type Reply: Decode;
    /// The script.
    fn script(scripts: &Scripts) -> &Script;
    /// `KEYS`.
    fn keys(&self, keys: &Keys) -> Vec<String>;
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
