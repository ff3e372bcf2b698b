//! Readiness-based coordination: reachability answers and intents ("tell
//! me when this user is reachable now"), on top of the store's session
//! facts and intents.
//!
//! An intent resolves as reachable only through something a callee's own
//! client does: a new or resumed session, a new readiness, or a return to
//! activity (time only ever makes a user less reachable). The node that
//! handles that change checks the user's waiting intents (one read of at
//! most `PRESENCE_MAX_INTENTS_TO_USER`; nothing on a quiet heartbeat) and
//! resolves each one whose need the user now meets, once (the store
//! decides the race between nodes). An intent expires on a timer of the
//! node holding its caller's session. Every node hears every notice and
//! delivers to the sockets it holds: `presence:intent_received` to the
//! callee's, the outcome to the caller's session, which takes the intent
//! from the store first so that it is delivered once. A caller whose
//! session comes back (a restart, another node) gets what resolved while it
//! was away, and its timers run again.

use std::sync::Arc;
use std::time::Duration;

use presence_core::{
    derive_reach, Capabilities, Clock, Intent, IntentNotice, IntentOutcome, Millis, Reach,
    SessionId, UserId,
};
use presence_store::{PresenceStore, StoreError, UserSession};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::socket::Bindings;

/// What coordination needs of the node.
pub struct Coordinator {
    /// The authoritative state.
    pub store: Arc<dyn PresenceStore>,
    /// The node's clock.
    pub clock: Arc<dyn Clock>,
    /// The sessions this node's connections hold.
    pub bindings: Arc<Bindings>,
}

/// `presence:reachable`, to the caller's session.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReachableMsg<'a> {
    intent_id: &'a str,
    user_id: &'a UserId,
    session_id: &'a SessionId,
    need: &'a Capabilities,
}

/// `presence:intent_expired`, to the caller's session.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ExpiredMsg<'a> {
    intent_id: &'a str,
    user_id: &'a UserId,
    need: &'a Capabilities,
}

/// `presence:intent_received` and `presence:intent_cancelled`, to the
/// callee's sessions.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReceivedMsg<'a> {
    intent_id: &'a str,
    from: &'a UserId,
    need: &'a Capabilities,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
    expires_at: Millis,
}

impl<'a> From<&'a Intent> for ReceivedMsg<'a> {
    fn from(i: &'a Intent) -> Self {
        ReceivedMsg {
            intent_id: &i.id,
            from: &i.from,
            need: &i.need,
            note: i.note.as_deref(),
            expires_at: i.expires_at,
        }
    }
}

impl Coordinator {
    /// A user's reachability for `need`, and their sessions (for the
    /// visibility rule).
    pub async fn reach(
        &self,
        user: &UserId,
        need: &Capabilities,
    ) -> Result<(Reach, Vec<UserSession>), StoreError> {
        let sessions = self.store.user_sessions(user).await?;
        let reach = derive_reach(sessions.iter().map(UserSession::signal), need);
        Ok((reach, sessions))
    }

    /// A new intent of `from` (from `from_session`, or a backend's when
    /// `None`) as a request asks it, made now.
    pub fn intent(
        &self,
        from: UserId,
        from_session: Option<SessionId>,
        req: crate::wire::IntentReq,
    ) -> Intent {
        let now = self.clock.now_ms();
        Intent {
            id: presence_store::api::new_session_id().to_string(),
            from,
            from_session,
            to: req.user_id,
            need: req.need,
            note: req.note,
            created_at: now,
            expires_at: now + req.ttl_ms,
            outcome: None,
        }
    }

    /// Makes an intent, tells the callee's sessions, starts its timer and,
    /// in the background (after the caller's ack has gone), resolves it if
    /// the callee is reachable now already. An error means nothing was made.
    pub async fn make(self: &Arc<Self>, intent: Intent) -> Result<(), StoreError> {
        self.store.put_intent(&intent).await?;
        crate::metrics::intent("made");
        if let Err(e) = self
            .store
            .publish_intent(&IntentNotice {
                intent: intent.clone(),
            })
            .await
        {
            tracing::warn!(error = %e, "cannot tell the callee's nodes of an intent");
        }
        self.expire_later(&intent);
        self.check_user_soon(&intent.to);
        Ok(())
    }

    /// Resolves the intents waiting for `user` that the user now meets.
    /// Called after a change a client of `user` made on this node.
    pub async fn check_user(&self, user: &UserId) -> Result<(), StoreError> {
        let waiting = self.store.intents_to(user).await?;
        self.resolve_met(user, waiting).await
    }

    /// Resolves those of `waiting` (intents for `user`) that the user meets
    /// now: reads the user's sessions only when something waits.
    async fn resolve_met(&self, user: &UserId, waiting: Vec<Intent>) -> Result<(), StoreError> {
        if waiting.is_empty() {
            return Ok(());
        }
        let sessions = self.store.user_sessions(user).await?;
        for intent in waiting {
            let reach = derive_reach(sessions.iter().map(UserSession::signal), &intent.need);
            let (presence_core::Reachability::Now, Some(session_id)) =
                (reach.reachability, reach.session)
            else {
                continue;
            };
            let outcome = IntentOutcome::Reachable { session_id };
            if let Some(resolved) = self.store.resolve_intent(&intent, outcome).await? {
                crate::metrics::intent("reachable");
                self.publish(resolved).await;
            }
        }
        Ok(())
    }

    /// Like [`Coordinator::check_user`], in the background: a failure is
    /// logged (the next change of the user checks again).
    pub fn check_user_soon(self: &Arc<Self>, user: &UserId) {
        let (me, user) = (self.clone(), user.clone());
        tokio::spawn(async move {
            if let Err(e) = me.check_user(&user).await {
                tracing::warn!(user_id = %user, error = %e, "cannot check the intents waiting for a user");
            }
        });
    }

    /// A session of `user` was just made here: it hears of the intents
    /// waiting for its user, and they are checked against it.
    pub fn session_opened(self: &Arc<Self>, user: &UserId, session: &SessionId, resumed: bool) {
        let (me, user, session) = (self.clone(), user.clone(), session.clone());
        tokio::spawn(async move {
            if let Err(e) = me.opened(&user, &session, resumed).await {
                tracing::warn!(user_id = %user, error = %e, "cannot restore a session's intents");
            }
        });
    }

    /// One read of the intents waiting for the user (for a new session,
    /// which hears of them, and to check them against it); for a resumed
    /// session, one more of those it made.
    async fn opened(
        self: &Arc<Self>,
        user: &UserId,
        session: &SessionId,
        resumed: bool,
    ) -> Result<(), StoreError> {
        let waiting = self.store.intents_to(user).await?;
        if !resumed {
            if let Some(socket) = self.bindings.socket_of(session) {
                for intent in &waiting {
                    socket
                        .emit("presence:intent_received", &ReceivedMsg::from(intent))
                        .ok();
                }
            }
        } else {
            // The caller side (a new session has made no intent yet): what
            // resolved while the session was away is delivered now; what
            // waits gets its timer here.
            for intent in self.store.intents_from(user).await? {
                if intent.from_session.as_ref() != Some(session) {
                    continue;
                }
                match intent.outcome {
                    Some(_) => self.deliver(&intent).await,
                    None => self.expire_later(&intent),
                }
            }
        }
        self.resolve_met(user, waiting).await
    }

    /// The session `session` of `user` ended (`presence:leave`): the intents
    /// it waits on are withdrawn (their callees hear so), in the background.
    pub fn session_ended(self: &Arc<Self>, user: &UserId, session: &SessionId) {
        let (me, user, session) = (self.clone(), user.clone(), session.clone());
        tokio::spawn(async move {
            let mine = match me.store.intents_from(&user).await {
                Ok(all) => all,
                Err(e) => {
                    tracing::warn!(user_id = %user, error = %e, "cannot withdraw an ended session's intents");
                    return;
                }
            };
            for intent in mine {
                if intent.from_session.as_ref() == Some(&session) && intent.outcome.is_none() {
                    if let Err(e) = me.withdraw(intent).await {
                        tracing::warn!(error = %e, "cannot withdraw an intent");
                    }
                }
            }
        });
    }

    /// Withdraws an intent of `user`: false when they have none by that id
    /// still waiting.
    pub async fn cancel(&self, user: &UserId, id: &str) -> Result<bool, StoreError> {
        let Some(intent) = self
            .store
            .intents_from(user)
            .await?
            .into_iter()
            .find(|i| i.id == id)
        else {
            return Ok(false);
        };
        self.withdraw(intent).await
    }

    /// Resolves `intent` as cancelled, takes it and tells its callee; false
    /// when it had resolved before.
    async fn withdraw(&self, intent: Intent) -> Result<bool, StoreError> {
        let Some(cancelled) = self
            .store
            .resolve_intent(&intent, IntentOutcome::Cancelled)
            .await?
        else {
            return Ok(false);
        };
        self.store.take_intent(&cancelled).await?;
        crate::metrics::intent("cancelled");
        self.publish(cancelled).await;
        Ok(true)
    }

    /// Expires `intent` at its TTL (a no-op if it resolved before).
    fn expire_later(self: &Arc<Self>, intent: &Intent) {
        let me = self.clone();
        let intent = intent.clone();
        let wait = (intent.expires_at - self.clock.now_ms()).max(0);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            match me
                .store
                .resolve_intent(&intent, IntentOutcome::Expired)
                .await
            {
                Ok(Some(expired)) => {
                    crate::metrics::intent("expired");
                    me.publish(expired).await;
                }
                Ok(None) => {}
                // The caller's next hello expires it (its TTL has passed).
                Err(e) => {
                    tracing::warn!(intent_id = %intent.id, error = %e, "cannot expire an intent")
                }
            }
        });
    }

    async fn publish(&self, intent: Intent) {
        if let Err(e) = self.store.publish_intent(&IntentNotice { intent }).await {
            // Delivered when the caller's session next says hello.
            tracing::warn!(error = %e, "cannot publish an intent's outcome");
        }
    }

    /// Delivers a resolved intent to its caller's session if this node
    /// holds it (taking it from the store first: delivered once).
    async fn deliver(&self, intent: &Intent) {
        let Some(session) = &intent.from_session else {
            return;
        };
        let Some(socket) = self.bindings.socket_of(session) else {
            return;
        };
        match self.store.take_intent(intent).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(intent_id = %intent.id, error = %e, "cannot take a resolved intent");
                return;
            }
        }
        let sent = match &intent.outcome {
            Some(IntentOutcome::Reachable { session_id }) => socket.emit(
                "presence:reachable",
                &ReachableMsg {
                    intent_id: &intent.id,
                    user_id: &intent.to,
                    session_id,
                    need: &intent.need,
                },
            ),
            Some(IntentOutcome::Expired) => socket.emit(
                "presence:intent_expired",
                &ExpiredMsg {
                    intent_id: &intent.id,
                    user_id: &intent.to,
                    need: &intent.need,
                },
            ),
            Some(IntentOutcome::Cancelled) | None => Ok(()),
        };
        if let Err(e) = sent {
            tracing::debug!(intent_id = %intent.id, error = %e, "cannot deliver an intent's outcome");
        }
    }

    /// Acts on one notice for the sockets this node holds.
    async fn on_notice(&self, n: IntentNotice) {
        let intent = &n.intent;
        match &intent.outcome {
            None => {
                for socket in self.bindings.sockets_of_user(&intent.to) {
                    socket
                        .emit("presence:intent_received", &ReceivedMsg::from(intent))
                        .ok();
                }
            }
            Some(IntentOutcome::Cancelled) => {
                for socket in self.bindings.sockets_of_user(&intent.to) {
                    socket
                        .emit("presence:intent_cancelled", &ReceivedMsg::from(intent))
                        .ok();
                }
            }
            Some(_) => self.deliver(intent).await,
        }
    }

    /// Hears every node's notices until the store closes.
    pub fn spawn_listener(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let mut rx = self.store.intent_notices();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(n) => me.on_notice(n).await,
                    // What was missed is delivered at the caller's next hello.
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "intent notices lagged")
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }
}
