//! How received items are printed: one JSON object a line, or for people.

use std::time::{Duration, UNIX_EPOCH};

use fastchat_client::{InboxItem, InboxKind};

fn timestamp(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The `recv --json` form of an item.
pub fn json(item: &InboxItem) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": fastchat_proto::MessageId(item.id).to_hex(),
        "from": item.from,
        "kind": item.kind,
        "sent_at": timestamp(item.sent_at_ms),
    });
    if item.kind == InboxKind::Text {
        v["text"] = serde_json::Value::String(item.text.clone());
    }
    if let Some(group) = &item.group {
        v["group"] = serde_json::Value::String(group.clone());
    }
    if let Some(member) = &item.member {
        v["member"] = serde_json::Value::String(member.clone());
    }
    if let Some(a) = &item.attachment {
        v["path"] = serde_json::Value::String(a.path.clone());
        v["bytes"] = serde_json::Value::from(a.bytes);
        v["digest"] = serde_json::Value::String(a.digest.clone());
    }
    v
}

/// The human form of an item, safe to print: whatever a peer wrote is
/// shown, never obeyed by the terminal.
pub fn human(item: &InboxItem) -> String {
    fastchat_client::shown(&human_raw(item)).into_owned()
}

fn human_raw(item: &InboxItem) -> String {
    let when = timestamp(item.sent_at_ms);
    let group = item.group.as_deref().unwrap_or("?");
    let member = item.member.as_deref().unwrap_or("?");
    match item.kind {
        InboxKind::Text if item.group.is_some() => {
            format!("[{when}] #{group} {}: {}", item.from, item.text)
        }
        InboxKind::Text => format!("[{when}] {}: {}", item.from, item.text),
        InboxKind::MemberAdded => format!("[{when}] #{group}: {} added {member}", item.from),
        InboxKind::MemberRemoved => format!("[{when}] #{group}: {} removed {member}", item.from),
        InboxKind::YouWereRemoved => {
            format!(
                "[{when}] #{group}: {} removed you from the group",
                item.from
            )
        }
        InboxKind::FriendRequest => format!(
            "[{when}] {0} wants to be your friend; run `fastchat friend add {0}` to accept",
            item.from
        ),
        InboxKind::FriendAccepted => {
            format!("[{when}] {} accepted your friend request", item.from)
        }
        InboxKind::Image | InboxKind::File => {
            let what = if item.kind == InboxKind::Image {
                "an image"
            } else {
                "a file"
            };
            let place = item
                .group
                .as_ref()
                .map(|g| format!("#{g} "))
                .unwrap_or_default();
            let (path, bytes) = item
                .attachment
                .as_ref()
                .map(|a| (a.path.as_str(), a.bytes))
                .unwrap_or(("?", 0));
            format!(
                "[{when}] {place}{} sent {what} ({bytes} bytes), saved as {path}",
                item.from
            )
        }
    }
}
