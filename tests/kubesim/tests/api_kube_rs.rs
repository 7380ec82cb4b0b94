//! kube-rs against kubesim: what a Rust controller would observe from a real API server.
//! CRUD and conflicts, selectors, watch with bookmarks and resume (and 410 for a
//! compacted version), CRDs with the status subresource, every patch flavour, garbage
//! collection, RBAC refusals and grants, TokenRequest/TokenReview, SubjectAccessReview.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, SelfSubjectReview, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::authorization::v1::{
    LocalSubjectAccessReview, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    PropagationPolicy, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Status;
use kube::{Client, Config};
use kubesim::{Cluster, Options};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(10);

async fn client_from(kubeconfig: Value) -> Client {
    let kubeconfig: Kubeconfig = serde_json::from_value(kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn admin(cluster: &Cluster) -> Client {
    client_from(cluster.admin_kubeconfig().unwrap()).await
}

async fn user(cluster: &Cluster, name: &str) -> Client {
    client_from(cluster.kubeconfig(name, &[]).unwrap()).await
}

/// A client authenticating with a bearer token instead of a certificate.
async fn token_client(cluster: &Cluster, token: &str) -> Client {
    let mut kubeconfig = cluster.admin_kubeconfig().unwrap();
    kubeconfig["users"][0]["user"] = json!({"token": token});
    client_from(kubeconfig).await
}

fn from<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// The `Status` of a failed call (panics on success or on a transport error).
fn status<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn configmap(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let data: BTreeMap<&str, &str> = data.iter().copied().collect();
    from(json!({"metadata": {"name": name, "labels": labels}, "data": data}))
}

fn names(list: &kube::api::ObjectList<ConfigMap>) -> Vec<String> {
    list.items.iter().map(|c| c.metadata.name.clone().unwrap()).collect()
}

async fn next_event<K, S>(stream: &mut S) -> WatchEvent<K>
where
    S: Stream<Item = Result<WatchEvent<K>, kube::Error>> + Unpin,
{
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("a watch event within the deadline")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn crud_conflicts_and_selectors() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(admin(&cluster).await, "default");
    let pp = PostParams::default();

    let created = cms
        .create(
            &pp,
            &configmap("web", &[("app", "web"), ("tier", "front")], &[("k", "v1")]),
        )
        .await
        .unwrap();
    cms.create(&pp, &configmap("db", &[("app", "db")], &[])).await.unwrap();
    assert_eq!(
        status(cms.create(&pp, &configmap("db", &[], &[])).await).reason,
        "AlreadyExists"
    );
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(cms.get("web").await.unwrap().data.unwrap()["k"], "v1");

    // Optimistic concurrency: a write based on a stale resourceVersion is refused.
    let mut fresh = created.clone();
    fresh.data = Some(BTreeMap::from([("k".to_owned(), "v2".to_owned())]));
    let updated = cms.replace("web", &pp, &fresh).await.unwrap();
    assert_ne!(updated.metadata.resource_version, created.metadata.resource_version);
    let conflict = status(cms.replace("web", &pp, &fresh).await);
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert!(
        conflict.message.contains("the object has been modified"),
        "{}",
        conflict.message
    );
    assert_eq!(cms.get("web").await.unwrap().data.unwrap()["k"], "v2");

    let select = |labels: &str, fields: &str| {
        let mut lp = ListParams::default();
        if !labels.is_empty() {
            lp = lp.labels(labels);
        }
        if !fields.is_empty() {
            lp = lp.fields(fields);
        }
        lp
    };
    assert_eq!(names(&cms.list(&select("app=web", "")).await.unwrap()), ["web"]);
    assert_eq!(names(&cms.list(&select("app!=web", "")).await.unwrap()), ["db"]);
    assert_eq!(
        names(&cms.list(&select("app in (web,db),!tier", "")).await.unwrap()),
        ["db"]
    );
    assert_eq!(
        names(&cms.list(&select("", "metadata.name=web")).await.unwrap()),
        ["web"]
    );
    assert_eq!(
        names(&cms.list(&select("app", "metadata.name!=web")).await.unwrap()),
        ["db"]
    );
    let bad = status(cms.list(&select("app in web", "")).await);
    assert_eq!(bad.code, 400);
    // Only the fields kube-apiserver indexes may be selected on, per type.
    let unsupported = status(cms.list(&select("", "data.k=v1")).await);
    assert_eq!(
        (
            unsupported.code,
            unsupported.reason.as_str(),
            unsupported.message.as_str()
        ),
        (400, "BadRequest", "field label not supported: data.k")
    );
    let pods: Api<Pod> = Api::namespaced(admin(&cluster).await, "default");
    let on_node = ListParams::default().fields("spec.nodeName=kubesim-node,status.phase!=Failed");
    assert!(pods.list(&on_node).await.unwrap().items.is_empty());
    assert_eq!(status(cms.list(&select("", "status.phase=Running")).await).code, 400);
    let watch = pods
        .watch(&WatchParams::default().fields("spec.containers=x"), "0")
        .await;
    let refused = match watch {
        Ok(_) => panic!("a watch with an unsupported field selector was accepted"),
        Err(e) => status::<()>(Err(e)),
    };
    assert_eq!(refused.message, "field label not supported: spec.containers");

    cms.delete("web", &DeleteParams::default()).await.unwrap();
    let gone = status(cms.get("web").await);
    assert_eq!((gone.code, gone.reason.as_str()), (404, "NotFound"));
    assert_eq!(gone.message, r#"configmaps "web" not found"#);

    // A Deployment: defaulted on create, generation follows spec changes.
    let deployments: Api<Deployment> = Api::namespaced(admin(&cluster).await, "default");
    let deploy: Deployment = from(json!({
        "metadata": {"name": "api"},
        "spec": {
            "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "api", "image": "kubesim/echo"}]}},
        },
    }));
    let d = deployments.create(&pp, &deploy).await.unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(d.metadata.generation, Some(1));
    let patched = deployments
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    assert_eq!(deployments.list(&ListParams::default()).await.unwrap().items.len(), 1);
    let mut invalid = deploy.clone();
    invalid.metadata.name = Some("broken".into());
    invalid
        .spec
        .as_mut()
        .unwrap()
        .template
        .metadata
        .as_mut()
        .unwrap()
        .labels = Some(BTreeMap::from([("app".into(), "other".into())]));
    assert_eq!(status(deployments.create(&pp, &invalid).await).reason, "Invalid");
    deployments.delete("api", &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn watch_with_bookmarks_and_resume() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(admin(&cluster).await, "default");
    let pp = PostParams::default();
    let first = cms
        .create(&pp, &configmap("w1", &[("watch", "me")], &[]))
        .await
        .unwrap();
    let from_rv = first.metadata.resource_version.clone().unwrap();

    let wp = WatchParams::default().labels("watch=me").timeout(30);
    let mut stream = cms.watch(&wp, &from_rv).await.unwrap().boxed();
    cms.create(&pp, &configmap("unlabelled", &[], &[])).await.unwrap();
    cms.create(&pp, &configmap("w2", &[("watch", "me")], &[]))
        .await
        .unwrap();
    cms.patch(
        "w2",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "1"}})),
    )
    .await
    .unwrap();
    cms.delete("w1", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    let mut after_modify = None;
    let mut bookmarks = 0;
    let deadline = Instant::now() + DEADLINE;
    while (seen.len() < 3 || bookmarks == 0) && Instant::now() < deadline {
        match next_event(&mut stream).await {
            WatchEvent::Added(c) => seen.push(format!("ADDED {}", c.metadata.name.unwrap())),
            WatchEvent::Modified(c) => {
                after_modify = c.metadata.resource_version.clone();
                seen.push(format!("MODIFIED {}", c.metadata.name.unwrap()));
            }
            WatchEvent::Deleted(c) => seen.push(format!("DELETED {}", c.metadata.name.unwrap())),
            WatchEvent::Bookmark(b) => {
                assert!(!b.metadata.resource_version.is_empty());
                bookmarks += 1;
            }
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        }
    }
    assert_eq!(
        seen,
        ["ADDED w2", "MODIFIED w2", "DELETED w1"],
        "the unlabelled object stays out"
    );
    assert!(bookmarks > 0, "bookmarks arrive on an idle watch");

    // Resuming from the version of the MODIFIED event replays only what came after it.
    let mut resumed = cms.watch(&wp, &after_modify.unwrap()).await.unwrap().boxed();
    loop {
        match next_event(&mut resumed).await {
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Deleted(c) => {
                assert_eq!(c.metadata.name.as_deref(), Some("w1"));
                break;
            }
            other => panic!("expected the deletion of w1 first, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_compacted_resource_version_is_gone() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(admin(&cluster).await, "default");
    let old = cms
        .create(&PostParams::default(), &configmap("churn", &[], &[]))
        .await
        .unwrap();
    // Push the version out of the event log (as etcd compaction would), in-process for speed.
    let rt = cluster.api.rt("", "configmaps").unwrap();
    let system = kubesim::api::User::system("test");
    for i in 0..=kubesim::store::LOG_CAPACITY {
        let body = json!({"data": {"n": i.to_string()}}).to_string();
        cluster
            .api
            .patch(
                &system,
                &rt,
                "default",
                "churn",
                kubesim::patch::PatchType::Merge,
                body.as_bytes(),
                None,
                None,
            )
            .await
            .unwrap();
    }
    let mut stream = cms
        .watch(
            &WatchParams::default(),
            old.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    match next_event(&mut stream).await {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{e:?}"),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    // The client's recovery: list again and watch from the list's version.
    let list = cms
        .list(&ListParams::default().fields("metadata.name=churn"))
        .await
        .unwrap();
    assert_eq!(
        list.items[0].data.as_ref().unwrap()["n"],
        kubesim::store::LOG_CAPACITY.to_string()
    );
    let mut stream = cms
        .watch(
            &WatchParams::default(),
            list.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    cms.patch(
        "churn",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"n": "last"}})),
    )
    .await
    .unwrap();
    loop {
        match next_event(&mut stream).await {
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Modified(c) => break assert_eq!(c.data.unwrap()["n"], "last"),
            other => panic!("expected the last change, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn crd_then_custom_objects_with_status() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let client = admin(&cluster).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = from(json!({
        "metadata": {"name": "widgets.kubesim.test"},
        "spec": {
            "group": "kubesim.test",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {"size": {"type": "integer"}, "color": {"type": "string"}}},
                    "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                }}},
            }],
        },
    }));
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let conditions = crds
            .get("widgets.kubesim.test")
            .await
            .unwrap()
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the CRD never became Established");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kubesim.test", "v1", "Widget"), "widgets");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let widget = DynamicObject::new("w", &ar)
        .data(json!({"spec": {"size": 3, "color": "red", "shape": "pruned"}, "status": {"phase": "Forged"}}));
    let created = widgets.create(&PostParams::default(), &widget).await.unwrap();
    assert_eq!(
        created.data["spec"],
        json!({"size": 3, "color": "red"}),
        "unknown fields are pruned"
    );
    assert!(
        created.data["status"].is_null(),
        "status is not set on create: {}",
        created.data
    );

    let written = widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}, "spec": {"size": 9}})),
        )
        .await
        .unwrap();
    assert_eq!(written.data["status"]["phase"], "Ready");
    assert_eq!(
        written.data["spec"]["size"], 3,
        "the status subresource writes only the status"
    );
    assert_eq!(written.metadata.generation, Some(1));

    let mut replaced = written.clone();
    replaced.data["spec"]["size"] = json!(4);
    replaced.data["status"]["phase"] = json!("Overwritten");
    let replaced = widgets.replace("w", &PostParams::default(), &replaced).await.unwrap();
    assert_eq!(
        (
            replaced.data["spec"]["size"].clone(),
            replaced.data["status"]["phase"].clone()
        ),
        (json!(4), json!("Ready"))
    );
    assert_eq!(replaced.metadata.generation, Some(2));

    let invalid = DynamicObject::new("bad", &ar).data(json!({"spec": {"size": "big"}}));
    let err = status(widgets.create(&PostParams::default(), &invalid).await);
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"), "{}", err.message);
    assert_eq!(widgets.list(&ListParams::default()).await.unwrap().items.len(), 1);
    let by_name = widgets
        .list(&ListParams::default().fields("metadata.name=w"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let by_spec = status(widgets.list(&ListParams::default().fields("spec.size=4")).await);
    assert_eq!(
        (by_spec.code, by_spec.message.as_str()),
        (
            400,
            r#""spec.size" is not a known field selector: only "metadata.name", "metadata.namespace""#
        )
    );
}

#[tokio::test]
async fn apply_and_every_patch_flavour() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let client = admin(&cluster).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let apply = PatchParams::apply("kubesim-test");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "1"}});
    let created = cms.patch("applied", &apply, &Patch::Apply(&body)).await.unwrap();
    assert_eq!(created.data.as_ref().unwrap()["a"], "1");
    let managers: Vec<_> = created
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|m| (m.manager.unwrap(), m.operation.unwrap()))
        .collect();
    assert!(
        managers.contains(&("kubesim-test".to_owned(), "Apply".to_owned())),
        "{managers:?}"
    );

    let merged = cms
        .patch(
            "applied",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"b": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.data.unwrap().len(), 2);
    let json_patch = Patch::Json::<()>(from(
        json!([{"op": "replace", "path": "/data/a", "value": "one"}, {"op": "remove", "path": "/data/b"}]),
    ));
    let patched = cms
        .patch("applied", &PatchParams::default(), &json_patch)
        .await
        .unwrap();
    assert_eq!(
        patched.data.unwrap(),
        BTreeMap::from([("a".to_owned(), "one".to_owned())])
    );
    let failing = Patch::Json::<()>(from(json!([{"op": "test", "path": "/data/a", "value": "two"}])));
    assert_eq!(
        status(cms.patch("applied", &PatchParams::default(), &failing).await).code,
        422
    );

    // Strategic merge: containers merge by name instead of replacing the list.
    let deployments: Api<Deployment> = Api::namespaced(client, "default");
    let deploy: Deployment = from(json!({
        "metadata": {"name": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {"metadata": {"labels": {"app": "shop"}}, "spec": {"containers": [
                {"name": "web", "image": "web:v1"}, {"name": "sidecar", "image": "sidecar:v1"},
            ]}},
        },
    }));
    deployments.create(&PostParams::default(), &deploy).await.unwrap();
    let strategic = json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "web:v2"}]}}}});
    let d = deployments
        .patch("shop", &PatchParams::default(), &Patch::Strategic(strategic))
        .await
        .unwrap();
    let images: Vec<_> = d
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| (c.name, c.image.unwrap()))
        .collect();
    assert_eq!(
        images,
        [
            ("web".to_owned(), "web:v2".to_owned()),
            ("sidecar".to_owned(), "sidecar:v1".to_owned())
        ]
    );
}

#[tokio::test]
async fn dry_run_answers_the_would_be_object_and_stores_nothing() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let client = admin(&cluster).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut events = cms
        .watch(&WatchParams::default().disable_bookmarks(), "0")
        .await
        .unwrap()
        .boxed();

    let would_be = cms
        .create(&dry, &configmap("draft", &[], &[("k", "v1")]))
        .await
        .unwrap();
    assert_eq!(would_be.data.unwrap()["k"], "v1");
    assert!(would_be.metadata.uid.is_some() && would_be.metadata.creation_timestamp.is_some());
    assert!(would_be.metadata.resource_version.is_none(), "nothing was stored");
    assert!(cms.get_opt("draft").await.unwrap().is_none());

    let stored = cms
        .create(&PostParams::default(), &configmap("draft", &[], &[("k", "v1")]))
        .await
        .unwrap();
    // Validation and conflicts are still checked.
    assert_eq!(
        status(cms.create(&dry, &configmap("draft", &[], &[])).await).reason,
        "AlreadyExists"
    );
    let mut changed = stored.clone();
    changed.data = Some(BTreeMap::from([("k".to_owned(), "v2".to_owned())]));
    let replaced = cms.replace("draft", &dry, &changed).await.unwrap();
    assert_eq!(replaced.data.unwrap()["k"], "v2");
    assert_eq!(replaced.metadata.resource_version, stored.metadata.resource_version);
    let mut stale = changed.clone();
    stale.metadata.resource_version = Some("1".into());
    assert_eq!(status(cms.replace("draft", &dry, &stale).await).code, 409);

    let patch = Patch::Merge(json!({"data": {"k": "v3"}}));
    let dry_patch = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let patched = cms.patch("draft", &dry_patch, &patch).await.unwrap();
    assert_eq!(patched.data.unwrap()["k"], "v3");
    let apply = PatchParams::apply("kubesim-test").dry_run();
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "1"}});
    let applied = cms.patch("applied", &apply, &Patch::Apply(&body)).await.unwrap();
    assert_eq!(applied.data.unwrap()["a"], "1");
    assert!(cms.get_opt("applied").await.unwrap().is_none());

    let dry_delete = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    cms.delete("draft", &dry_delete).await.unwrap();
    let now = cms.get("draft").await.unwrap();
    assert_eq!(now.data.unwrap()["k"], "v1", "dry runs changed the object");
    assert_eq!(now.metadata.resource_version, stored.metadata.resource_version);
    // The watch saw the one real create and nothing else.
    match next_event(&mut events).await {
        WatchEvent::Added(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("draft")),
        other => panic!("expected ADDED, got {other:?}"),
    }
    cms.delete("draft", &DeleteParams::default()).await.unwrap();
    match next_event(&mut events).await {
        WatchEvent::Deleted(cm) => assert_eq!(cm.data.unwrap()["k"], "v1"),
        other => panic!("expected DELETED right after ADDED, got {other:?}"),
    }

    // A dry-run Service shows the address a create would get without taking it.
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    let svc: k8s_openapi::api::core::v1::Service =
        from(json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}));
    let shown = services.create(&dry, &svc).await.unwrap().spec.unwrap().cluster_ip;
    let taken = services
        .create(&PostParams::default(), &svc)
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip;
    assert!(shown.is_some());
    assert_eq!(shown, taken);

    // Only "All" is a dry-run value.
    let req = http::Request::post("/api/v1/namespaces/default/configmaps?dryRun=Some")
        .header("content-type", "application/json")
        .body(json!({"metadata": {"name": "x"}}).to_string().into_bytes())
        .unwrap();
    let answer = status(client.request::<Value>(req).await);
    assert_eq!(answer.code, 422, "{}", answer.message);
}

#[tokio::test]
async fn a_resource_version_in_a_patch_is_a_precondition() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(admin(&cluster).await, "default");
    let created = cms
        .create(&PostParams::default(), &configmap("pinned", &[], &[("k", "v1")]))
        .await
        .unwrap();
    let first = created.metadata.resource_version.clone().unwrap();
    let pp = PatchParams::default();
    let patched = cms
        .patch(
            "pinned",
            &pp,
            &Patch::Merge(json!({"metadata": {"resourceVersion": first}, "data": {"k": "v2"}})),
        )
        .await
        .unwrap();
    assert_ne!(patched.metadata.resource_version.as_deref(), Some(first.as_str()));
    for patch in [
        Patch::Merge(json!({"metadata": {"resourceVersion": first}, "data": {"k": "v3"}})),
        Patch::Strategic(json!({"metadata": {"resourceVersion": first}, "data": {"k": "v3"}})),
        Patch::Json::<Value>(from(json!([
            {"op": "replace", "path": "/metadata/resourceVersion", "value": first},
            {"op": "replace", "path": "/data/k", "value": "v3"},
        ]))),
    ] {
        let conflict = status(cms.patch("pinned", &pp, &patch).await);
        assert_eq!(
            (conflict.code, conflict.reason.as_str()),
            (409, "Conflict"),
            "{patch:?}"
        );
    }
    let apply = PatchParams::apply("kubesim-test");
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pinned", "resourceVersion": first}, "data": {"k": "v3"}});
    assert_eq!(
        status(cms.patch("pinned", &apply, &Patch::Apply(&body)).await).code,
        409
    );
    assert_eq!(cms.get("pinned").await.unwrap().data.unwrap()["k"], "v2");
}

#[tokio::test]
async fn deleting_an_owner_collects_its_dependents() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(admin(&cluster).await, "default");
    let pp = PostParams::default();
    let owner = cms.create(&pp, &configmap("owner", &[], &[])).await.unwrap();
    let owned_by =
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid.clone().unwrap()}]);
    for name in ["child", "other-child"] {
        cms.create(
            &pp,
            &from(json!({"metadata": {"name": name, "ownerReferences": owned_by}})),
        )
        .await
        .unwrap();
    }
    cms.create(&pp, &configmap("bystander", &[], &[])).await.unwrap();
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while cms.get_opt("child").await.unwrap().is_some() || cms.get_opt("other-child").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "dependents were not collected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cms.get_opt("bystander").await.unwrap().is_some());

    // Orphan propagation keeps dependents and drops the reference.
    let owner = cms.create(&pp, &configmap("owner2", &[], &[])).await.unwrap();
    let owned_by =
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner.metadata.uid.unwrap()}]);
    cms.create(
        &pp,
        &from(json!({"metadata": {"name": "orphan", "ownerReferences": owned_by}})),
    )
    .await
    .unwrap();
    let orphan = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..DeleteParams::default()
    };
    cms.delete("owner2", &orphan).await.unwrap();
    let kept = cms.get("orphan").await.unwrap();
    assert!(kept.metadata.owner_references.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn a_user_without_bindings_is_refused_until_bound() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let mallory = user(&cluster, "mallory").await;
    let pods: Api<Pod> = Api::namespaced(mallory.clone(), "default");
    let err = status(pods.list(&ListParams::default()).await);
    assert_eq!((err.code, err.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        err.message,
        r#"pods is forbidden: User "mallory" cannot list resource "pods" in API group "" in the namespace "default""#
    );
    let cms: Api<ConfigMap> = Api::namespaced(mallory.clone(), "default");
    assert_eq!(
        status(cms.get("x").await).message,
        r#"configmaps "x" is forbidden: User "mallory" cannot get resource "configmaps" in API group "" in the namespace "default""#
    );
    let deploys: Api<Deployment> = Api::all(mallory.clone());
    assert_eq!(
        status(deploys.list(&ListParams::default()).await).message,
        r#"deployments.apps is forbidden: User "mallory" cannot list resource "deployments" in API group "apps" at the cluster scope"#
    );
    // Discovery and the self-reviews are open to every authenticated user.
    assert_eq!(mallory.apiserver_version().await.unwrap().major, "1");
    let me = Api::<SelfSubjectReview>::all(mallory.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let info = me.status.unwrap().user_info.unwrap();
    assert_eq!(info.username.as_deref(), Some("mallory"));
    assert!(info.groups.unwrap().contains(&"system:authenticated".to_owned()));

    let admin = admin(&cluster).await;
    let admin_client = admin.clone();
    let role = json!({"metadata": {"name": "pod-reader"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"], "resourceNames": ["visible"]},
    ]});
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &from(role))
        .await
        .unwrap();
    let binding = json!({
        "metadata": {"name": "mallory-reads-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}],
    });
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin, "default")
        .create(&PostParams::default(), &from(binding))
        .await
        .unwrap();

    assert!(pods.list(&ListParams::default()).await.unwrap().items.is_empty());
    let pod: Pod =
        from(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "kubesim/echo"}]}}));
    assert_eq!(
        status(pods.create(&PostParams::default(), &pod).await).message,
        r#"pods is forbidden: User "mallory" cannot create resource "pods" in API group "" in the namespace "default""#
    );
    // resourceNames allow a list or watch pinned to the name by a field selector, nothing wider.
    Api::<ConfigMap>::namespaced(admin_client.clone(), "default")
        .create(&PostParams::default(), &configmap("visible", &[], &[]))
        .await
        .unwrap();
    let pinned = ListParams::default().fields("metadata.name=visible");
    assert_eq!(names(&cms.list(&pinned).await.unwrap()), ["visible"]);
    let mut watch = cms
        .watch(&WatchParams::default().fields("metadata.name=visible"), "0")
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(next_event(&mut watch).await, WatchEvent::Added(c) if c.metadata.name.as_deref() == Some("visible"))
    );
    assert_eq!(
        status(cms.list(&ListParams::default()).await).message,
        r#"configmaps is forbidden: User "mallory" cannot list resource "configmaps" in API group "" in the namespace "default""#
    );
    let elsewhere: Api<Pod> = Api::namespaced(mallory, "kube-system");
    assert_eq!(
        status(elsewhere.list(&ListParams::default()).await).code,
        403,
        "a RoleBinding grants only its namespace"
    );
}

fn review_status(review: TokenReview) -> k8s_openapi::api::authentication::v1::TokenReviewStatus {
    review.status.unwrap()
}

async fn token_review(client: &Client, token: &str, audiences: &[&str]) -> Result<TokenReview, kube::Error> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
        },
        ..TokenReview::default()
    };
    Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
}

#[tokio::test]
async fn token_request_and_review_with_audiences_and_a_bound_pod() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let admin = admin(&cluster).await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    let sa = sas
        .create(&PostParams::default(), &from(json!({"metadata": {"name": "web"}})))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = from(
        json!({"metadata": {"name": "web-0"}, "spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "kubesim/echo"}]}}),
    );
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let pod_uid = pod.metadata.uid.unwrap();

    let request = |audiences: &[&str], seconds: i64, bound: Option<&str>| TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: Some(seconds),
            bound_object_ref: bound.map(|name| BoundObjectReference {
                kind: Some("Pod".into()),
                api_version: Some("v1".into()),
                name: Some(name.into()),
                uid: None,
            }),
        },
        ..TokenRequest::default()
    };
    let issued = sas
        .create_token_request(
            "web",
            &PostParams::default(),
            &request(&["shunt.dev/sidecar"], 600, Some("web-0")),
        )
        .await
        .unwrap();
    let bound = issued.spec.bound_object_ref.unwrap();
    assert_eq!(bound.uid.as_deref(), Some(pod_uid.as_str()));
    let st = issued.status.unwrap();
    let lifetime = st.expiration_timestamp.0.as_second() - epoch_now();
    assert!((590..=610).contains(&lifetime), "expires in {lifetime}s");
    let token = st.token;

    let ok = review_status(
        token_review(&admin, &token, &["other", "shunt.dev/sidecar"])
            .await
            .unwrap(),
    );
    assert_eq!(ok.authenticated, Some(true), "{ok:?}");
    assert_eq!(ok.audiences.unwrap(), ["shunt.dev/sidecar"]);
    let who = ok.user.unwrap();
    assert_eq!(who.username.as_deref(), Some("system:serviceaccount:default:web"));
    assert_eq!(who.uid, sa.metadata.uid);
    assert!(who
        .groups
        .unwrap()
        .contains(&"system:serviceaccounts:default".to_owned()));
    let extra = who.extra.unwrap();
    assert_eq!(extra["authentication.kubernetes.io/pod-name"], ["web-0"]);
    assert_eq!(extra["authentication.kubernetes.io/pod-uid"], [pod_uid.as_str()]);

    // The API server's own audience is not among the token's: no authentication.
    let wrong = review_status(token_review(&admin, &token, &[]).await.unwrap());
    assert_eq!(wrong.authenticated, Some(false));
    assert_eq!(
        wrong.error.unwrap(),
        r#"token audiences ["shunt.dev/sidecar"] is invalid for the target audiences ["https://kubernetes.default.svc.cluster.local"]"#
    );
    let garbage = review_status(token_review(&admin, "not-a-token", &[]).await.unwrap());
    assert_eq!(
        (garbage.authenticated, garbage.error.as_deref()),
        (Some(false), Some("invalid bearer token"))
    );
    let elsewhere = Api::<ConfigMap>::namespaced(token_client(&cluster, &token).await, "default");
    assert_eq!(
        status(elsewhere.list(&ListParams::default()).await).code,
        401,
        "not an API credential"
    );

    // Validation as kube-apiserver.
    let short = status(
        sas.create_token_request("web", &PostParams::default(), &request(&[], 60, None))
            .await,
    );
    assert_eq!(short.code, 422);
    assert!(
        short
            .message
            .contains("may not specify a duration less than 10 minutes"),
        "{}",
        short.message
    );
    assert_eq!(
        status(
            sas.create_token_request("ghost", &PostParams::default(), &request(&[], 600, None))
                .await
        )
        .code,
        404
    );
    assert_eq!(
        status(
            sas.create_token_request("web", &PostParams::default(), &request(&[], 600, Some("nope")))
                .await
        )
        .code,
        404
    );

    // A token with the default audience is an API credential for the service account.
    let api_token = sas
        .create_token_request("web", &PostParams::default(), &request(&[], 3600, None))
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let as_sa = token_client(&cluster, &api_token).await;
    let me = Api::<SelfSubjectReview>::all(as_sa.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    assert_eq!(
        me.status.unwrap().user_info.unwrap().username.as_deref(),
        Some("system:serviceaccount:default:web")
    );
    assert_eq!(
        status(
            Api::<ConfigMap>::namespaced(as_sa, "default")
                .list(&ListParams::default())
                .await
        )
        .message,
        r#"configmaps is forbidden: User "system:serviceaccount:default:web" cannot list resource "configmaps" in API group "" in the namespace "default""#
    );

    // The bound token dies with its pod.
    pods.delete(
        "web-0",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let st = review_status(token_review(&admin, &token, &["shunt.dev/sidecar"]).await.unwrap());
        if st.authenticated == Some(false) {
            assert_eq!(st.error.as_deref(), Some("service account token has been invalidated"));
            break;
        }
        assert!(Instant::now() < deadline, "the bound token outlived its pod");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Creating TokenReviews takes system:auth-delegator (or similar) rights.
    let bob = user(&cluster, "bob").await;
    assert_eq!(
        status(token_review(&bob, &api_token, &[]).await).message,
        r#"tokenreviews.authentication.k8s.io is forbidden: User "bob" cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope"#
    );
    let binding = json!({
        "metadata": {"name": "bob-delegates"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}],
    });
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin)
        .create(&PostParams::default(), &from(binding))
        .await
        .unwrap();
    assert_eq!(
        review_status(token_review(&bob, &api_token, &[]).await.unwrap()).authenticated,
        Some(true)
    );
}

/// Seconds since the epoch.
fn epoch_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn steal_review(user: &str, groups: &[&str], namespace: &str, verb: &str, name: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(groups.iter().map(|g| g.to_string()).collect()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                verb: Some(verb.into()),
                group: Some("api.shunt.dev".into()),
                resource: Some("targets".into()),
                name: Some(name.into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

#[tokio::test]
async fn subject_access_review_for_a_custom_verb() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let admin = admin(&cluster).await;
    let pp = PostParams::default();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .create(&pp, &from(json!({"metadata": {"name": "shop"}})))
        .await
        .unwrap();
    let role = json!({"metadata": {"name": "stealer"}, "rules": [{"apiGroups": ["api.shunt.dev"], "resources": ["targets"], "verbs": ["steal"], "resourceNames": ["deployment.api"]}]});
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), "shop")
        .create(&pp, &from(role))
        .await
        .unwrap();
    let binding = json!({
        "metadata": {"name": "sidecar-steals"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "stealer"},
        "subjects": [{"kind": "ServiceAccount", "name": "sidecar", "namespace": "shop"}],
    });
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), "shop")
        .create(&pp, &from(binding))
        .await
        .unwrap();

    let sars: Api<SubjectAccessReview> = Api::all(admin.clone());
    let sa = "system:serviceaccount:shop:sidecar";
    let groups = [
        "system:serviceaccounts",
        "system:serviceaccounts:shop",
        "system:authenticated",
    ];
    let ask = |user: &'static str, ns: &'static str, verb: &'static str, name: &'static str| {
        let sars = sars.clone();
        async move {
            sars.create(&PostParams::default(), &steal_review(user, &groups, ns, verb, name))
                .await
                .unwrap()
                .status
                .unwrap()
        }
    };
    let yes = ask(sa, "shop", "steal", "deployment.api").await;
    assert!(yes.allowed);
    assert_eq!(
        yes.reason.as_deref(),
        Some(
            r#"RBAC: allowed by RoleBinding "sidecar-steals/shop" of Role "stealer" to ServiceAccount "sidecar/shop""#
        )
    );
    assert!(
        !ask(sa, "shop", "steal", "deployment.web").await.allowed,
        "resourceNames restrict"
    );
    assert!(
        !ask(sa, "shop", "get", "deployment.api").await.allowed,
        "only the custom verb"
    );
    assert!(
        !ask(sa, "default", "steal", "deployment.api").await.allowed,
        "only in its namespace"
    );
    assert!(
        !ask("system:serviceaccount:shop:other", "shop", "steal", "deployment.api")
            .await
            .allowed
    );
    let masters = sars
        .create(&pp, &steal_review("root", &["system:masters"], "shop", "steal", "x"))
        .await
        .unwrap();
    assert!(masters.status.unwrap().allowed);

    let mut anonymous = steal_review("", &[], "shop", "steal", "deployment.api");
    anonymous.spec.groups = None;
    assert_eq!(status(sars.create(&pp, &anonymous).await).code, 422);

    // The namespaced flavour must name its own namespace.
    let local: Api<LocalSubjectAccessReview> = Api::namespaced(admin, "shop");
    let spec = steal_review(sa, &groups, "shop", "steal", "deployment.api").spec;
    let mut review = LocalSubjectAccessReview {
        spec,
        ..LocalSubjectAccessReview::default()
    };
    review.metadata.namespace = Some("shop".into());
    assert!(local.create(&pp, &review).await.unwrap().status.unwrap().allowed);
    review.spec.resource_attributes.as_mut().unwrap().namespace = Some("default".into());
    assert_eq!(status(local.create(&pp, &review).await).code, 400);
}
