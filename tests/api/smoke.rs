use serde_json::json;

use crate::helpers::{spawn_app, within};

/// A patch is acked to its sender, broadcast to the other client, and seen by a late joiner.
#[tokio::test]
async fn patch_is_acked_broadcast_and_kept() {
    let app = spawn_app().await;
    let (mut a, _) = app.join("smoke", "a").await;
    let (mut b, _) = app.join("smoke", "b").await;
    assert_eq!(a.recv().await, json!({"type": "clientCount", "count": 2}));
    a.send(json!({"type": "patch", "messageId": "m1", "documentPatches": [{"e/S": {"_exists": true, "x": 1}}]}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "ack", "messageId": "m1", "timestamp": 1})
    );
    assert_eq!(
        b.recv().await,
        json!({"type": "patch", "documentPatches": [{"e/S": {"_exists": true, "x": 1}}], "clientId": "a", "timestamp": 1})
    );
    let (_c, frames) = app.join("smoke", "c").await;
    assert_eq!(
        frames,
        vec![
            json!({"type": "clientCount", "count": 3}),
            json!({"type": "patch", "documentPatches": [{"e/S": {"_exists": true, "x": 1}}], "clientId": "", "timestamp": 1}),
            json!({"type": "synced", "timestamp": 1}),
        ]
    );
    assert!(within(app.shutdown.shutdown()).await);
}
