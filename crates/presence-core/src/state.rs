//! A session's state in a room, and the one rule that changes it.

use crate::JsonMap;

/// Applies `patch` to `state` as a shallow merge: each field of the patch
/// replaces the field of that name, and a `null` deletes it. An empty
/// result is no state at all (`None`), as a session that never set one.
pub fn merge(state: Option<JsonMap>, patch: JsonMap) -> Option<JsonMap> {
    let mut next = state.unwrap_or_default();
    for (k, v) in patch {
        if v.is_null() {
            next.remove(&k);
        } else {
            next.insert(k, v);
        }
    }
    (!next.is_empty()).then_some(next)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(v: serde_json::Value) -> JsonMap {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn fields_are_replaced_added_and_deleted_one_level_deep() {
        let state = map(json!({ "a": 1, "b": { "x": 1 }, "c": 3 }));
        let patch = map(json!({ "a": 2, "b": { "y": 2 }, "c": null, "d": 4 }));
        assert_eq!(
            merge(Some(state), patch),
            Some(map(json!({ "a": 2, "b": { "y": 2 }, "d": 4 })))
        );
    }

    #[test]
    fn deleting_every_field_leaves_no_state() {
        let state = map(json!({ "a": 1 }));
        assert_eq!(merge(Some(state), map(json!({ "a": null }))), None);
        assert_eq!(merge(None, map(json!({ "a": null }))), None);
        assert_eq!(merge(None, JsonMap::new()), None);
    }
}
