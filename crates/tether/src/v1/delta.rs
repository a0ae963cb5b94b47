//! Delta compression of `tether.v1` messages: JSON Merge Patch (RFC 7396).
//!
//! A subscription asks for deltas with `"delta":"merge-patch"`. After a full
//! first message for a key, each message for that key may arrive with a
//! `patch` (and the `base` sequence number it applies to) instead of its
//! `content`; the client applies the patch to the content it holds for that
//! key (docs/protocol.md, "Delta compression"). The server makes the patch
//! once per published message ([`diff`]), both ends apply it with [`apply`].
//!
//! Merge patch cannot say "set this member to `null`" (RFC 7396 §1: `null`
//! means remove), so [`diff`] returns `None` whenever the patch would not
//! reproduce the target exactly; the server then sends the full content.

use serde_json::{Map, Value};

/// The `delta` value of a `subscribe` that asks for merge patches.
pub const MERGE_PATCH: &str = "merge-patch";

/// A merge patch that turns `base` into `target` (RFC 7396 §2 applied to
/// it gives exactly `target`), or `None` if no merge patch can (the target
/// holds a `null` member where the base differs, or is itself `null`
/// inside a replaced object).
///
/// The patch names only the members that changed; arrays and non-objects
/// are replaced whole (RFC 7396 §2: a non-object patch replaces the target).
pub fn diff(base: &Value, target: &Value) -> Option<Value> {
    match (base, target) {
        (Value::Object(b), Value::Object(t)) => {
            let mut patch = Map::new();
            for k in b.keys().filter(|k| !t.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            for (k, tv) in t {
                match b.get(k) {
                    Some(bv) if bv == tv => {}
                    Some(bv @ Value::Object(_)) if tv.is_object() => {
                        patch.insert(k.clone(), diff(bv, tv)?);
                    }
                    _ => {
                        // A replaced member: a `null` would read as "remove", and
                        // an object holding a `null` member would lose it.
                        if tv.is_null() || has_null_member(tv) {
                            return None;
                        }
                        patch.insert(k.clone(), tv.clone());
                    }
                }
            }
            Some(Value::Object(patch))
        }
        // RFC 7396 §2: a patch that is not an object replaces the target,
        // except that it cannot be an object (that would merge) or null.
        (_, t) if !t.is_object() && !t.is_null() => Some(t.clone()),
        (_, t) if t.is_object() && !has_null_member(t) => {
            // Merging an object into a non-object starts from `{}`: the
            // target itself, as the patch, gives the target.
            Some(t.clone())
        }
        _ => None,
    }
}

/// Whether an object (at any depth through objects; arrays are copied
/// verbatim by a merge) has a `null` member.
fn has_null_member(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.values().any(|v| v.is_null() || has_null_member(v)),
        _ => false,
    }
}

/// Apply a merge patch to `target` in place (RFC 7396 §2, MergePatch).
pub fn apply(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { unreachable!("made an object above") };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            apply(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc_7396_appendix_a_examples_apply() {
        // RFC 7396 Appendix A: (original, patch, result).
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (json!({"a":"b","b":"c"}), json!({"a":null}), json!({"b":"c"})),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (json!({"a":{"b":"c"}}), json!({"a":{"b":"d","c":null}}), json!({"a":{"b":"d"}})),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a","b"]), json!(["c","d"]), json!(["c","d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1,2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (json!({}), json!({"a":{"bb":{"ccc":null}}}), json!({"a":{"bb":{}}})),
        ];
        for (mut original, patch, result) in cases {
            apply(&mut original, &patch);
            assert_eq!(original, result, "patch {patch}");
        }
    }

    #[test]
    fn diff_reproduces_the_target_or_declines() {
        let docs = [
            json!({"symbol":"TTR","price":42.5,"bid":42.4,"ask":42.6,"book":{"depth":3,"levels":[1,2,3]}}),
            json!({"symbol":"TTR","price":42.7,"bid":42.4,"ask":42.8,"book":{"depth":4,"levels":[1,2,3]}}),
            json!({"symbol":"TTR","price":42.7,"book":{"depth":4}}),
            json!({"symbol":"TTR","price":null}),
            json!({"symbol":"TTR","note":{"x":null}}),
            json!([1, 2, {"a": null}]),
            json!("text"),
            json!(null),
            json!(7),
            json!({}),
            json!({"nested":{"deep":{"k":1}}}),
            json!({"nested":{"deep":{"k":2,"j":[null]}}}),
        ];
        for base in &docs {
            for target in &docs {
                match diff(base, target) {
                    Some(patch) => {
                        let mut got = base.clone();
                        apply(&mut got, &patch);
                        assert_eq!(&got, target, "{base} -> {target} via {patch}");
                    }
                    None => assert!(
                        target.is_null() || has_null_member(target),
                        "declined without a null in the target: {base} -> {target}"
                    ),
                }
            }
        }
        // Only what changed.
        assert_eq!(diff(&docs[0], &docs[1]), Some(json!({"price":42.7,"ask":42.8,"book":{"depth":4}})));
        // An unchanged null member needs no patch entry, so it is fine.
        assert_eq!(diff(&json!({"a":null,"b":1}), &json!({"a":null,"b":2})), Some(json!({"b":2})));
    }
}
