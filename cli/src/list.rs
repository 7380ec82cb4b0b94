//! `shunt sessions`, `shunt sessions kill` and `shunt targets`: listings as aligned
//! tables or the API's JSON or YAML.

use kube::api::{DeleteParams, DynamicObject, ListParams, ObjectList};
use kube::Api;
use serde_json::Value;
use shunt_proto::Filter;

use crate::args::Output;
use crate::cluster::{age, explain, resource, Cluster};

/// Lists sessions of the namespace (or all).
pub async fn sessions(cluster: &Cluster, all: bool, output: Output) -> anyhow::Result<()> {
    let api = cluster.sessions((!all).then_some(cluster.namespace.as_str()));
    let list = api.list(&ListParams::default()).await.map_err(explain)?;
    if output != Output::Table {
        return print_object(&list, output);
    }
    let mut rows = vec![vec![
        "NAMESPACE",
        "NAME",
        "USER",
        "TARGET",
        "MODE",
        "FILTER",
        "PORTS",
        "PODS",
        "AGE",
    ]
    .into_iter()
    .map(String::from)
    .collect()];
    for s in &list.items {
        let (spec, status) = (&s.data["spec"], &s.data["status"]);
        let filter = serde_json::from_value::<Filter>(spec["filter"].clone())
            .map_or_else(|_| "<all>".to_owned(), |f| f.to_string());
        let ports: Vec<String> = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["port"].to_string())
            .collect();
        let pods = status["pods"].as_array().cloned().unwrap_or_default();
        let reached = pods.iter().filter(|p| p["connected"] == true).count();
        rows.push(vec![
            s.metadata.namespace.clone().unwrap_or_default(),
            s.metadata.name.clone().unwrap_or_default(),
            text(&status["user"]),
            text(&spec["target"]),
            text(&spec["mode"]),
            filter,
            ports.join(","),
            format!("{reached}/{}", pods.len()),
            age(s.metadata.creation_timestamp.as_ref()),
        ]);
    }
    let scope = if all {
        "any namespace".to_owned()
    } else {
        format!("namespace {}", cluster.namespace)
    };
    print_table(rows, all, "sessions", &scope);
    Ok(())
}

/// Ends a session.
pub async fn kill(cluster: &Cluster, name: &str) -> anyhow::Result<()> {
    cluster
        .sessions(Some(&cluster.namespace))
        .delete(name, &DeleteParams::default())
        .await
        .map_err(explain)?;
    println!("session {}/{name} ended", cluster.namespace);
    Ok(())
}

/// Lists the targets of the namespace.
pub async fn targets(cluster: &Cluster, output: Output) -> anyhow::Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        cluster.client.clone(),
        &cluster.namespace,
        &resource("Target", "targets"),
    );
    let list = api.list(&ListParams::default()).await.map_err(explain)?;
    if output != Output::Table {
        return print_object(&list, output);
    }
    let mut rows = vec![vec!["NAME", "KIND", "PODS", "INJECTED", "READY", "CONNECTED"]
        .into_iter()
        .map(String::from)
        .collect()];
    for t in &list.items {
        let (spec, status) = (&t.data["spec"], &t.data["status"]);
        let count = |v: &Value| if v.is_null() { "-".to_owned() } else { text(v) };
        rows.push(vec![
            t.metadata.name.clone().unwrap_or_default(),
            text(&spec["kind"]),
            count(&status["pods"]),
            count(&status["injected"]),
            count(&status["ready"]),
            count(&status["connected"]),
        ]);
    }
    print_table(rows, true, "targets", &format!("namespace {}", cluster.namespace));
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Prints `list` as JSON or YAML, the way `kubectl get -o json|yaml` does.
fn print_object(list: &ObjectList<DynamicObject>, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Yaml => print!("{}", serde_saphyr::to_string(list)?),
        _ => println!("{}", serde_json::to_string_pretty(list)?),
    }
    Ok(())
}

/// Prints rows with aligned columns; without `keep_first`, drops the first (namespace) column.
fn print_table(mut rows: Vec<Vec<String>>, keep_first: bool, what: &str, scope: &str) {
    if rows.len() == 1 {
        eprintln!("No {what} found in {scope}.");
        return;
    }
    if !keep_first {
        rows.iter_mut().for_each(|r| {
            r.remove(0);
        });
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", cells.join("   ").trim_end());
    }
}
