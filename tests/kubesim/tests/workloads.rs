//! Workloads on kubesim, as a user observes them through kube-rs: a Deployment of the
//! built-in `kubesim/echo` image becomes running processes with distinct pod IPs that
//! answer HTTP/1.1 and h2c with their pod names; a Service's cluster IP spreads
//! connections over them; scaling, a killed process (restart), a pod deletion (SIGTERM,
//! object gone) and dropping the cluster (nothing left behind) — in loopback mode and,
//! as root, in netns mode. Plus StatefulSet/DaemonSet pods, env, volumes and logs.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use kubesim::{Cluster, Network, Options};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(30);

async fn admin(cluster: &Cluster) -> Client {
    let kubeconfig: Kubeconfig = serde_json::from_value(cluster.admin_kubeconfig().unwrap()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Polls `f` until it returns `Some`, failing the test with `what` after [`DEADLINE`].
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether process `pid` is gone (or a zombie: dead, waiting to be reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn pid_of(pod: &Pod) -> Option<u32> {
    let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    status.container_id.as_ref()?.strip_prefix("kubesim://")?.parse().ok()
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The ready pods of `app` once there are exactly `n` pods (and all are ready).
async fn ready_pods(pods: &Api<Pod>, app: &str, n: usize) -> Vec<Pod> {
    eventually(&format!("{n} ready {app} pods"), || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .ok()?;
        (list.items.len() == n && list.items.iter().all(ready)).then_some(list.items)
    })
    .await
}

/// HTTP/1.1 GET / on a fresh connection; returns the `x-served-by` header.
async fn get_h1(addr: SocketAddr) -> Option<String> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    response
        .lines()
        .find_map(|l| l.strip_prefix("x-served-by: "))
        .map(str::to_owned)
}

/// HTTP/2 with prior knowledge (h2c); returns the `x-served-by` header.
async fn get_h2c(addr: SocketAddr) -> Option<String> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let request = http::Request::builder()
        .uri(format!("http://{addr}/"))
        .body(Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    assert_eq!(response.version(), http::Version::HTTP_2);
    let served_by = response.headers().get("x-served-by")?.to_str().ok()?.to_owned();
    let _ = response.into_body().collect().await;
    Some(served_by)
}

fn pod_addr(pod: &Pod) -> SocketAddr {
    let ip: IpAddr = pod.status.as_ref().unwrap().pod_ip.as_ref().unwrap().parse().unwrap();
    SocketAddr::new(ip, 8080)
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap()
}

async fn scale(deployments: &Api<Deployment>, replicas: i32) {
    deployments
        .patch(
            "echo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

/// Options with a `shell` image (`sh -c ARGS`).
fn options(network: Network) -> Options {
    let images = BTreeMap::from([("shell".to_owned(), vec!["sh".to_owned(), "-c".to_owned()])]);
    Options { network, images }
}

/// Runs a `shell` pod to completion and returns its log.
async fn run_script(pods: &Api<Pod>, name: &str, script: &str, extra: serde_json::Value) -> String {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "shell", "args": [script]}]},
    });
    json_patch::merge(&mut pod, &extra);
    pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap())
        .await
        .unwrap();
    let phase = eventually(&format!("pod {name} to finish"), || async {
        let phase = pods.get(name).await.ok()?.status?.phase?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    let log = pods.logs(name, &LogParams::default()).await.unwrap();
    assert_eq!(phase, "Succeeded", "pod {name} failed; its log:\n{log}");
    log
}

async fn deployment_of_echo_pods(network: Network) {
    let cluster = Cluster::start(options(network)).await.unwrap();
    let client = admin(&cluster).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "echo"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}},
                "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                    "name": "echo", "image": "kubesim/echo:latest",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                }]},
            },
        },
    });
    deployments
        .create(&PostParams::default(), &serde_json::from_value(deployment).unwrap())
        .await
        .unwrap();
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"}, "spec": {"selector": {"app": "echo"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}});
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service = services
        .create(&PostParams::default(), &serde_json::from_value(service).unwrap())
        .await
        .unwrap();

    // Three processes, three distinct IPs, each answering with its own pod name.
    let three = ready_pods(&pods, "echo", 3).await;
    let ips: BTreeSet<String> = three
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
        .collect();
    assert_eq!(ips.len(), 3, "pod IPs must be distinct: {ips:?}");
    for pod in &three {
        assert!(name(pod).starts_with("echo-"), "{}", name(pod));
        assert!(!process_gone(pid_of(pod).unwrap()), "{} has a live process", name(pod));
        // Ready (no probe) can come a moment before the server listens: poll for the first answer.
        let addr = pod_addr(pod);
        assert_eq!(eventually("the pod answers HTTP/1.1", || get_h1(addr)).await, name(pod));
        assert_eq!(get_h2c(addr).await.as_deref(), Some(name(pod).as_str()));
    }
    let owner = &three[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("ReplicaSet", Some(true)));
    let d = deployments.get("echo").await.unwrap();
    let status = eventually("the Deployment's status", || async {
        let s = deployments.get("echo").await.ok()?.status?;
        (s.available_replicas == Some(3) && s.updated_replicas == Some(3)).then_some(s)
    })
    .await;
    assert_eq!(
        (status.ready_replicas, status.observed_generation),
        (Some(3), d.metadata.generation)
    );

    // The Service's cluster IP spreads connections over all three pods.
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    eventually("3 ready endpoints", || async {
        let ep = endpoints.get("echo").await.ok()?;
        let subset = ep.subsets?.into_iter().next()?;
        (subset.addresses?.len() == 3 && subset.ports?[0].port == 8080).then_some(())
    })
    .await;
    let cluster_ip: IpAddr = service
        .spec
        .as_ref()
        .unwrap()
        .cluster_ip
        .as_ref()
        .unwrap()
        .parse()
        .unwrap();
    // Port 80, or 30080 when not root in loopback mode (unprivileged processes cannot bind 80).
    let service_addr =
        kubesim::network::balancer::service_address(&serde_json::to_value(&service).unwrap(), 80).unwrap();
    let names: BTreeSet<String> = three.iter().map(name).collect();
    let served = eventually("the Service to reach every pod", || async {
        let mut seen = BTreeSet::new();
        for _ in 0..9 {
            seen.insert(get_h1(service_addr).await?);
        }
        (seen == names).then_some(seen)
    })
    .await;
    assert_eq!(served.len(), 3);

    // Pods reach the Service (service-link env in both modes, DNS names in netns mode)
    // and the API server.
    let mut script = "curl -s http://$ECHO_SERVICE_HOST:$ECHO_SERVICE_PORT/; echo; curl -sk -o /dev/null -w 'api=%{http_code}' https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version; echo".to_owned();
    if network == Network::Netns {
        script.push_str("; getent hosts echo echo.default.svc.cluster.local; curl -s http://echo.default/");
    }
    let log = run_script(&pods, "client", &script, json!({})).await;
    assert!(
        names.iter().any(|n| log.contains(&format!("\"served_by\":\"{n}\""))),
        "{log}"
    );
    assert!(
        log.contains("api=200") || log.contains("api=401") || log.contains("api=403"),
        "{log}"
    );
    if network == Network::Netns {
        assert!(
            log.contains(&format!("{cluster_ip}      echo")) || log.contains(&cluster_ip.to_string()),
            "{log}"
        );
        assert_eq!(log.matches("served_by").count(), 2, "{log}");
    }

    // Scale to 5 and back to 3: the extra processes go away.
    scale(&deployments, 5).await;
    let five = ready_pods(&pods, "echo", 5).await;
    let pids: BTreeMap<String, u32> = five.iter().map(|p| (name(p), pid_of(p).unwrap())).collect();
    assert_eq!(pids.values().collect::<BTreeSet<_>>().len(), 5);
    scale(&deployments, 3).await;
    let three = ready_pods(&pods, "echo", 3).await;
    let kept: BTreeSet<String> = three.iter().map(name).collect();
    for (pod, pid) in pids.iter().filter(|(pod, _)| !kept.contains(*pod)) {
        eventually(&format!("{pod}'s process to exit"), || async {
            process_gone(*pid).then_some(())
        })
        .await;
    }

    // kill -9 a container process: restarted (restartCount 1) and serving again.
    let victim = three[0].clone();
    let old_pid = pid_of(&victim).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let restarted = eventually("the killed container to restart", || async {
        let pod = pods.get(&name(&victim)).await.ok()?;
        let count = pod.status.as_ref()?.container_statuses.as_ref()?[0].restart_count;
        (count == 1 && ready(&pod) && pid_of(&pod) != Some(old_pid)).then_some(pod)
    })
    .await;
    assert!(process_gone(old_pid));
    let addr = pod_addr(&restarted);
    let answer = eventually("the restarted pod to answer", || async { get_h1(addr).await }).await;
    assert_eq!(answer, name(&victim));

    // Deleting a pod stops its process (SIGTERM) and the object disappears; the
    // ReplicaSet replaces it.
    let doomed = three[1].clone();
    let doomed_pid = pid_of(&doomed).unwrap();
    pods.delete(&name(&doomed), &DeleteParams::default()).await.unwrap();
    eventually("the deleted pod's process to exit", || async {
        process_gone(doomed_pid).then_some(())
    })
    .await;
    eventually("the deleted pod object to disappear", || async {
        pods.get_opt(&name(&doomed)).await.ok()?.is_none().then_some(())
    })
    .await;
    let replaced = ready_pods(&pods, "echo", 3).await;
    assert!(!replaced.iter().any(|p| name(p) == name(&doomed)));

    // Dropping the cluster leaves no process, namespace or link behind.
    let pids: Vec<u32> = replaced.iter().filter_map(pid_of).collect();
    let netns_names: Vec<String> = replaced
        .iter()
        .filter_map(|p| {
            let ip: std::net::Ipv4Addr = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            let [_, _, i, n] = ip.octets();
            (network == Network::Netns).then(|| format!("kubesim-{i}-{n}"))
        })
        .collect();
    drop(cluster);
    for pid in pids {
        assert!(process_gone(pid), "process {pid} survived the cluster");
    }
    if network == Network::Netns {
        let list = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout);
        for ns in &netns_names {
            assert!(
                !list.lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())),
                "namespace {ns} survived the cluster"
            );
        }
        let bridge = format!("ksim{}", netns_names[0].split('-').nth(1).unwrap());
        let link = std::process::Command::new("ip")
            .args(["link", "show", &bridge])
            .output()
            .unwrap();
        assert!(!link.status.success(), "bridge {bridge} survived the cluster");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_of_echo_pods_in_loopback_mode() {
    deployment_of_echo_pods(Network::Loopback).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_of_echo_pods_in_netns_mode() {
    if !shunt_netns::root_available("deployment_of_echo_pods_in_netns_mode") {
        return;
    }
    deployment_of_echo_pods(Network::Netns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_volumes_init_containers_and_logs() {
    let cluster = Cluster::start(options(Network::Loopback)).await.unwrap();
    let client = admin(&cluster).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let post = |kind: &str, body: serde_json::Value| {
        let ar = match kind {
            "ConfigMap" => kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
            _ => kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
        };
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
        async move {
            api.create(&PostParams::default(), &serde_json::from_value(body).unwrap())
                .await
                .unwrap()
        }
    };
    post(
        "ConfigMap",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"greeting": "hello"}}),
    )
    .await;
    post("Secret", json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"}, "stringData": {"password": "s3cret"}})).await;

    // Downward API, ConfigMap/Secret env, a projected token and a ConfigMap volume.
    let script = "echo name=$MY_NAME ip=$MY_IP app=$MY_APP greeting=$GREETING password=$PASSWORD expanded=$EXPANDED; \
                  echo token=$(cat $TOKEN_FILE); echo file=$(cat $CONFIG_DIR/greeting); echo from=$cfg_greeting";
    let extra = json!({
        "metadata": {"labels": {"app": "envtest"}},
        "spec": {
            "volumes": [
                {"name": "tokens", "projected": {"sources": [{"serviceAccountToken": {"audience": "shunt", "expirationSeconds": 3600, "path": "shunt"}}]}},
                {"name": "config", "configMap": {"name": "cfg"}},
            ],
            "containers": [{"name": "main", "image": "shell", "args": [script],
                "volumeMounts": [{"name": "tokens", "mountPath": "/var/run/secrets/tokens"}, {"name": "config", "mountPath": "/etc/config"}],
                "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "cfg_"}],
                "env": [
                    {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MY_APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                    {"name": "EXPANDED", "value": "$(MY_NAME)-x"},
                    {"name": "TOKEN_FILE", "value": "/var/run/secrets/tokens/shunt"},
                    {"name": "CONFIG_DIR", "value": "/etc/config"},
                ]}],
        },
    });
    let log = run_script(&pods, "env", script, extra).await;
    let ip = pods.get("env").await.unwrap().status.unwrap().pod_ip.unwrap();
    assert!(
        log.contains(&format!(
            "name=env ip={ip} app=envtest greeting=hello password=s3cret expanded=env-x"
        )),
        "{log}"
    );
    assert!(log.contains("file=hello") && log.contains("from=hello"), "{log}");
    let token = log.lines().find_map(|l| l.strip_prefix("token=")).unwrap().trim();
    let info = cluster
        .api
        .tokens
        .lookup(token)
        .expect("the projected token is a live ServiceAccount token");
    assert_eq!(
        (info.service_account.as_str(), info.audiences.as_slice()),
        ("default", ["shunt".to_owned()].as_slice())
    );
    assert_eq!(info.pod.unwrap().0, "env");

    // An init container runs to completion first; a native sidecar keeps running.
    let init = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "init", "labels": {"app": "init"}},
        "spec": {
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [
                {"name": "prepare", "image": "shell", "args": ["echo prepared > $WORK/state"], "env": [{"name": "WORK", "value": "/work"}], "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "sidecar", "image": "shell", "args": ["exec sleep 300"], "restartPolicy": "Always"},
            ],
            "containers": [{"name": "main", "image": "shell", "args": ["echo started; cat $WORK/state; exec sleep 300"], "env": [{"name": "WORK", "value": "/work"}],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
        },
    });
    pods.create(&PostParams::default(), &serde_json::from_value(init).unwrap())
        .await
        .unwrap();
    let pod = ready_pods(&pods, "init", 1).await.remove(0);
    let status = pod.status.unwrap();
    let inits = status.init_container_statuses.unwrap();
    assert_eq!(
        inits[0]
            .state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("Completed")
    );
    assert!(
        inits[1].state.as_ref().unwrap().running.is_some(),
        "the sidecar keeps running"
    );
    let log = eventually("the main container's log", || async {
        pods.logs("init", &LogParams::default())
            .await
            .ok()
            .filter(|l| l.contains("prepared"))
    })
    .await;
    assert_eq!(log, "started\nprepared\n");
    let last = LogParams {
        tail_lines: Some(1),
        ..LogParams::default()
    };
    assert_eq!(pods.logs("init", &last).await.unwrap(), "prepared\n");

    // StatefulSet pods are named by ordinal; a DaemonSet runs one pod on the node.
    let apps = |kind: &str| {
        let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("apps", "v1", kind));
        Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), "default", &ar)
    };
    let template = |app: &str| json!({"metadata": {"labels": {"app": app}}, "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "echo", "image": "kubesim/echo"}]}});
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web"}, "spec": {"replicas": 2, "serviceName": "web", "selector": {"matchLabels": {"app": "web"}}, "template": template("web")}});
    apps("StatefulSet")
        .create(&PostParams::default(), &serde_json::from_value(sts).unwrap())
        .await
        .unwrap();
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"}, "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("agent")}});
    apps("DaemonSet")
        .create(&PostParams::default(), &serde_json::from_value(ds).unwrap())
        .await
        .unwrap();
    let web: BTreeSet<String> = ready_pods(&pods, "web", 2).await.iter().map(name).collect();
    assert_eq!(web, BTreeSet::from(["web-0".to_owned(), "web-1".to_owned()]));
    let agent = ready_pods(&pods, "agent", 1).await;
    assert!(name(&agent[0]).starts_with("agent-"));
    // Without a readiness probe a pod is Ready once its process runs (as in Kubernetes),
    // which can be a moment before the echo server listens.
    let agent_addr = pod_addr(&agent[0]);
    let answered = eventually("the DaemonSet pod answers", || get_h1(agent_addr)).await;
    assert_eq!(answered, name(&agent[0]));

    // A rolling update replaces every pod with the new template; the old ReplicaSet stays at 0.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let roll = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "roll"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "roll"}}, "template": template("roll")}});
    deployments
        .create(&PostParams::default(), &serde_json::from_value(roll).unwrap())
        .await
        .unwrap();
    let before: BTreeSet<String> = ready_pods(&pods, "roll", 2).await.iter().map(name).collect();
    let change = json!({"spec": {"template": {"spec": {"containers": [{"name": "echo", "image": "kubesim/echo", "env": [{"name": "VERSION", "value": "2"}]}]}}}});
    deployments
        .patch("roll", &PatchParams::default(), &Patch::Strategic(change))
        .await
        .unwrap();
    let generation = deployments.get("roll").await.unwrap().metadata.generation;
    eventually("the rollout to complete", || async {
        let d = deployments.get("roll").await.ok()?;
        let s = d.status?;
        let done = s.observed_generation == generation
            && s.updated_replicas == Some(2)
            && s.replicas == Some(2)
            && s.available_replicas == Some(2);
        done.then_some(())
    })
    .await;
    let after = ready_pods(&pods, "roll", 2).await;
    assert!(
        after.iter().all(|p| !before.contains(&name(p))),
        "every pod was replaced"
    );
    assert!(after.iter().all(|p| p.spec.as_ref().unwrap().containers[0]
        .env
        .as_ref()
        .is_some_and(|e| e[0].name == "VERSION")));
    let rs_api = apps("ReplicaSet");
    let sets = rs_api.list(&ListParams::default().labels("app=roll")).await.unwrap();
    let mut replicas: Vec<i64> = sets
        .items
        .iter()
        .map(|rs| rs.data["spec"]["replicas"].as_i64().unwrap())
        .collect();
    replicas.sort();
    assert_eq!(replicas, [0, 2]);
    cluster.shutdown().await;
}

/// `Cluster::set_api_down`: clients are cut and refused while the API server is down,
/// running pods go on, and everything answers again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_can_be_taken_down_and_brought_back() {
    let cluster = Cluster::start(options(Network::Loopback)).await.unwrap();
    let client = admin(&cluster).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    assert!(namespaces.list(&Default::default()).await.is_ok());
    cluster.set_api_down(true);
    let down = tokio::time::timeout(std::time::Duration::from_secs(10), namespaces.list(&Default::default()))
        .await
        .expect("a request to a down API server must fail at once, not hang");
    assert!(down.is_err(), "the API answered while down");
    cluster.set_api_down(false);
    eventually("the API to answer again", || async {
        namespaces.list(&Default::default()).await.ok()
    })
    .await;
}
