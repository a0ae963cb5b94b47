//! Mint a JWT connection token and connect with it (docs/auth.md).
//!
//! ```sh
//! tether serve --jwt-secret s3cret &
//! cargo run -p tether-cli --example jwt_connect -- ws://127.0.0.1:8080/ s3cret
//! ```
//!
//! The token (what your backend would issue at login) names the user and
//! allows `chat:*`: the subscription to `chat:lobby` is acked, the one to
//! `admin:x` is refused with `forbidden`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tether::{ClientBuilder, Message};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/".into());
    let secret = args.next().unwrap_or_else(|| "s3cret".into());
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let claims = serde_json::json!({
        "sub": "alice",
        "exp": exp,
        "subscribe": ["chat:*"],
        "publish": ["chat:*"],
        "presence": ["chat:*"],
    });
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()))?;
    let (mut ws, _) = ClientBuilder::new(&url).protocol("tether.v1").header("Authorization", format!("Bearer {token}")).connect().await?;
    for (id, topic) in [(1, "chat:lobby"), (2, "admin:x")] {
        ws.send(serde_json::json!({"type": "subscribe", "topic": topic, "id": id}).to_string()).await?;
    }
    ws.send(serde_json::json!({"type": "publish", "topic": "chat:lobby", "content": "hello from alice"}).to_string()).await?;
    // welcome, two answers, and alice's own message (sender "alice").
    let mut seen = 0;
    while seen < 4 {
        match tokio::time::timeout(Duration::from_secs(5), ws.recv()).await? {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t)?;
                if v["type"] != "presence" {
                    println!("{v}");
                    seen += 1;
                }
            }
            Some(Ok(_)) => {}
            other => return Err(format!("connection ended: {other:?}").into()),
        }
    }
    ws.close(tether::CloseCode::NORMAL, "bye").await?;
    Ok(())
}
