#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

/// A pod network that knows `reviews`, echoes on connections to `reviews:9080`, and
/// refuses everything else like a policy would.
struct FakePod;

impl Remote for FakePod {
    fn connect<'a>(&'a self, authority: &'a str) -> BoxFuture<'a, Result<RemoteStream, String>> {
        Box::pin(async move {
            if authority != "reviews:9080" {
                return Err(format!("403: policy shop/no-out blocks {authority}"));
            }
            let (near, mut far) = tokio::io::duplex(1024);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = far.read(&mut buf).await {
                    if n == 0 || far.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Box::new(near) as RemoteStream)
        })
    }

    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>> {
        Box::pin(async move {
            match name {
                "reviews" => Ok(vec!["10.96.0.12".parse().unwrap()]),
                _ => Err("404: not found".into()),
            }
        })
    }
}

async fn ask(path: &std::path::Path, question: Value) -> Value {
    let mut conn = UnixStream::connect(path).await.unwrap();
    conn.write_all(format!("{question}\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    serde_json::from_str(answer.trim()).unwrap()
}

#[tokio::test]
async fn the_layer_questions_are_answered() {
    let dir = std::env::temp_dir().join(format!("shunt-exec-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("layer.sock");
    let _ = std::fs::remove_file(&path);
    let local = vec!["192.168.0.0/16".parse().unwrap()];
    let shared = Shared::new(vec![(8080, 3000), (9090, 9090)], local, Some(Arc::new(FakePod)));
    tokio::spawn(serve(UnixListener::bind(&path).unwrap(), shared.clone()));

    assert_eq!(
        ask(&path, json!({"op": "listen", "port": 3000, "addr": "0.0.0.0"})).await,
        json!({"session": true})
    );
    assert_eq!(
        ask(&path, json!({"op": "listen", "port": 4000, "addr": "::"})).await,
        json!({})
    );
    assert_eq!(listener_for(&shared, 8080), Some("127.0.0.1:3000".parse().unwrap()));
    assert_eq!(listener_for(&shared, 9090), None, "4000 is no session port");

    assert_eq!(
        ask(&path, json!({"op": "resolve", "name": "reviews"})).await,
        json!({"addresses": ["10.96.0.12"]})
    );
    assert_eq!(
        ask(&path, json!({"op": "resolve", "name": "laptop"})).await,
        json!({"local": true})
    );

    let answer = ask(&path, json!({"op": "connect", "addr": "[::ffff:10.96.0.12]:9080"})).await;
    let port = answer["port"].as_u64().unwrap();
    let mut relay = tokio::net::TcpStream::connect(("127.0.0.1", port as u16))
        .await
        .unwrap();
    relay.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    relay.read_exact(&mut buf).await.unwrap();
    assert_eq!(
        &buf, b"ping",
        "the relay reaches the pod's connection (by the resolved name)"
    );

    let refused = ask(&path, json!({"op": "connect", "addr": "10.0.0.9:80"})).await;
    assert_eq!(refused["errno"], 111);
    assert!(
        refused["error"].as_str().unwrap().contains("policy shop/no-out"),
        "{refused}"
    );
    assert_eq!(
        ask(&path, json!({"op": "connect", "addr": "192.168.4.4:5432"})).await,
        json!({"local": true})
    );

    shared
        .peers
        .lock()
        .unwrap()
        .insert(41000, "10.244.0.9".parse().unwrap());
    assert_eq!(
        ask(&path, json!({"op": "peer", "port": 41000})).await,
        json!({"addr": "10.244.0.9:0"})
    );
    assert_eq!(ask(&path, json!({"op": "peer", "port": 41001})).await, json!({}));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn local_rules_parse_and_match() {
    let rule: LocalRule = "10.1.2.3:5432".parse().unwrap();
    assert!(rule.matches("10.1.2.3:5432".parse().unwrap()) && !rule.matches("10.1.2.3:80".parse().unwrap()));
    let rule: LocalRule = "fd00::/8".parse().unwrap();
    assert!(rule.matches("[fd12::1]:1".parse().unwrap()) && !rule.matches("10.0.0.1:1".parse().unwrap()));
    assert!("10.0.0.0/33"
        .parse::<LocalRule>()
        .unwrap_err()
        .contains("192.168.0.0/16"));
}
