#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn container(value: serde_json::Value) -> Container {
    serde_json::from_value(value).unwrap()
}

#[test]
fn the_pod_spec_env_is_built_like_the_kubelet_does() {
    let c = container(json!({
        "name": "api",
        "envFrom": [{"configMapRef": {"name": "base"}, "prefix": "CFG_"}, {"secretRef": {"name": "hidden"}}],
        "env": [
            {"name": "HOST", "value": "db"},
            {"name": "URL", "value": "postgres://$(HOST):5432/$(NOPE) costs $$5"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['team']"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "base", "key": "level"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "hidden", "key": "token"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "x", "optional": true}}},
        ],
    }));
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": "api-7d9f-x2", "labels": {"team": "shop"}}})).unwrap();
    let mut objects = Objects::default();
    objects.0.insert(
        ("configmap", "base".into()),
        Ok(BTreeMap::from([("level".into(), "debug".into())])),
    );
    objects
        .0
        .insert(("secret", "hidden".into()), Err("you may not read it".into()));
    objects
        .0
        .insert(("secret", "gone".into()), Err("it does not exist".into()));
    let env = compute(&c, Some(&pod), "shop", &objects);
    let get = |n: &str| env.vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(get("CFG_level"), Some("debug"));
    assert_eq!(get("URL"), Some("postgres://db:5432/$(NOPE) costs $5"));
    assert_eq!(
        (get("POD"), get("NS"), get("TEAM")),
        (Some("api-7d9f-x2"), Some("shop"), Some("shop"))
    );
    assert_eq!(get("LEVEL"), Some("debug"));
    assert_eq!((get("TOKEN"), get("OPT")), (None, None));
    assert_eq!(
        env.skipped,
        [
            "envFrom secret hidden: you may not read it",
            "TOKEN: secret hidden: you may not read it"
        ]
    );
    let without_pod = compute(&c, None, "shop", &objects);
    assert!(without_pod
        .skipped
        .iter()
        .any(|s| s.starts_with("POD: metadata.name needs a running pod")));
}

#[test]
fn filters_include_exclude_and_block() {
    let vars = vec![
        ("DB_PASSWORD".to_owned(), "x".to_owned()),
        ("DB_HOST".to_owned(), "db".to_owned()),
        ("LOG".to_owned(), "1".to_owned()),
    ];
    let glob = |g: &str| Glob::new(g).unwrap();
    let filter = EnvFilter {
        include: vec![],
        exclude: vec![glob("*PASSWORD*")],
        blocked: false,
    };
    let (kept, left) = filter.apply(vars.clone());
    assert_eq!(kept.len(), 2);
    assert_eq!(left, ["DB_PASSWORD"]);
    let filter = EnvFilter {
        include: vec![glob("DB_*")],
        exclude: vec![],
        blocked: false,
    };
    assert_eq!(filter.apply(vars.clone()).0.len(), 2);
    let filter = EnvFilter {
        include: vec![],
        exclude: vec![],
        blocked: true,
    };
    assert_eq!(filter.apply(vars).1.len(), 3);
}
