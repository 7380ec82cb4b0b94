//! The API server's semantics, independent of HTTP: create, get, list, update, patch
//! and delete with defaulting, admission, optimistic concurrency, the `status`
//! subresource split, finalizers, graceful pod deletion and garbage collection.
//! The HTTP layer (`server/`) and the built-in controllers both go through here, so
//! pods a ReplicaSet creates pass admission webhooks just like kube-apiserver's do.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};

use crate::patch::{self, PatchType};
use crate::pki::Pki;
use crate::resources::{Registry, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{ns_name, rv_of, Store, StoreError};
use crate::{admission, defaults, util};

/// An authenticated caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// User name (`alice`, `system:serviceaccount:ns:sa`).
    pub name: String,
    /// Groups, including `system:authenticated`.
    pub groups: Vec<String>,
    /// UID (service accounts).
    pub uid: String,
    /// Extra attributes (e.g. the bound pod of a service-account token).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// An internal component with full access (controllers, kubelet).
    pub fn system(name: &str) -> User {
        User {
            name: name.into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
            ..User::default()
        }
    }
}

/// Admission operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// CREATE
    Create,
    /// UPDATE
    Update,
    /// DELETE
    Delete,
}

impl Operation {
    /// The AdmissionReview spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// Options of a delete.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// `Orphan` keeps dependents; anything else deletes them.
    pub propagation: Option<String>,
    /// Grace period for pods (None: the pod's own).
    pub grace_seconds: Option<i64>,
    /// `dryRun: [All]`: answer with what would be deleted, delete nothing.
    pub dry_run: bool,
}

/// Options of a patch.
#[derive(Clone, Copy, Debug, Default)]
pub struct PatchOptions<'a> {
    /// `fieldManager` (recorded for server-side apply).
    pub field_manager: Option<&'a str>,
    /// `dryRun=All`: everything but the write.
    pub dry_run: bool,
}

/// Where the kubelet plugs in: pod logs.
pub trait PodLogs: Send + Sync {
    /// The log of `container` (or the first) of pod `namespace/name`.
    fn logs(&self, namespace: &str, name: &str, container: Option<&str>) -> Option<String>;
}

/// The API server state.
pub struct Api {
    /// Objects.
    pub store: Store,
    /// Served types.
    pub registry: Registry,
    /// Certificates.
    pub pki: Arc<Pki>,
    /// Service IPs are allocated from here.
    pub service_ips: crate::network::ServiceIps,
    /// Pod logs, once the kubelet runs.
    pub pod_logs: OnceLock<Arc<dyn PodLogs>>,
    /// Service-account tokens.
    pub tokens: crate::auth::tokens::Tokens,
    /// True while the API server is "down" ([`crate::Cluster::set_api_down`]): every
    /// connection is cut and new ones are closed at once.
    pub outage: tokio::sync::watch::Sender<bool>,
}

fn map_store(e: StoreError, rt: &ResourceType, name: &str) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found(&rt.group, &rt.plural, name),
        StoreError::AlreadyExists => ApiError::already_exists(&rt.group, &rt.plural, name),
        StoreError::Conflict => ApiError::conflict(&rt.group, &rt.plural, name),
        StoreError::Gone => ApiError::gone("too old resource version"),
    }
}

/// The store key of a type.
pub fn key(rt: &ResourceType) -> (String, String) {
    (rt.group.clone(), rt.plural.clone())
}

/// Everything but metadata and status: a change here bumps `metadata.generation`.
fn spec_of(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    o
}

impl Api {
    /// A new API state with the given certificates and service address range.
    pub fn new(pki: Arc<Pki>, service_ips: crate::network::ServiceIps) -> Arc<Api> {
        Arc::new(Api {
            store: Store::default(),
            registry: Registry::default(),
            pki,
            service_ips,
            pod_logs: OnceLock::new(),
            tokens: crate::auth::tokens::Tokens::default(),
            outage: tokio::sync::watch::Sender::new(false),
        })
    }

    /// The type of `plural` in the core or a named group, any version.
    pub fn rt(&self, group: &str, plural: &str) -> Result<Arc<ResourceType>, ApiError> {
        self.registry.any_version(group, plural).ok_or_else(|| {
            ApiError::not_found(group, plural, "").with_message(format!(
                "the server could not find the requested resource ({plural}.{group})"
            ))
        })
    }

    /// Reads one object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let obj = self
            .store
            .get(&key(rt), ns, name)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        Ok(self.present(rt, obj))
    }

    /// Sets `apiVersion` to the version asked for (one copy serves all versions).
    fn present(&self, rt: &ResourceType, mut obj: Value) -> Value {
        obj["apiVersion"] = Value::String(rt.api_version());
        obj["kind"] = Value::String(rt.kind.clone());
        obj
    }

    /// Lists objects as a `<Kind>List`.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>, labels: &LabelSelector, fields: &FieldSelector) -> Value {
        let (items, rv) = self.store.list(&key(rt), ns);
        let items: Vec<Value> = items
            .into_iter()
            .filter(|o| labels.matches(&o["metadata"]["labels"]) && fields.matches(o))
            .map(|o| self.present(rt, o))
            .collect();
        json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        })
    }

    /// Creates an object in `ns` ("" for cluster-scoped).
    pub async fn create(
        &self,
        user: &User,
        rt: &ResourceType,
        ns: &str,
        obj: Value,
    ) -> Result<(Value, Vec<String>), ApiError> {
        self.create_with(user, rt, ns, obj, false).await
    }

    /// [`Api::create`], or with `dry_run` (`?dryRun=All`) everything a create does
    /// (defaulting, admission, validation) but the write: the answer is the object
    /// that would have been stored, without a resourceVersion.
    pub async fn create_with(
        &self,
        user: &User,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<(Value, Vec<String>), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        self.check_kind(rt, &obj)?;
        obj["apiVersion"] = Value::String(rt.api_version());
        obj["kind"] = Value::String(rt.kind.clone());
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let generated = obj["metadata"]["name"].as_str().unwrap_or_default().is_empty();
        let meta = &mut obj["metadata"];
        if meta["name"].as_str().unwrap_or_default().is_empty() {
            match meta["generateName"].as_str() {
                Some(prefix) if !prefix.is_empty() => {
                    meta["name"] = Value::String(format!("{prefix}{}", util::suffix(5)))
                }
                _ => {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ))
                }
            }
        }
        if rt.namespaced {
            match meta["namespace"].as_str() {
                Some(given) if !given.is_empty() && given != ns => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({given}) does not match the namespace sent on the request ({ns})"
                    )))
                }
                _ => meta["namespace"] = Value::String(ns.to_owned()),
            }
            self.check_namespace(ns)?;
        } else if let Some(map) = meta.as_object_mut() {
            map.remove("namespace");
        }
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        defaults::validate_name(rt, &name)?;
        defaults::on_create(self, rt, &mut obj, dry_run)?;
        // Webhooks see a generateName object without a name, as with kube-apiserver,
        // which generates names after admission.
        let generated = if generated {
            obj["metadata"].as_object_mut().and_then(|m| m.remove("name"))
        } else {
            None
        };
        let warnings = admission::admit(self, user, Operation::Create, rt, &mut obj, None, dry_run).await?;
        if let Some(generated) = generated.filter(|_| obj["metadata"]["name"].as_str().unwrap_or_default().is_empty()) {
            obj["metadata"]["name"] = generated;
        }
        defaults::validate(self, rt, &obj)?;
        let meta = &mut obj["metadata"];
        meta["uid"] = Value::String(util::uid());
        meta["creationTimestamp"] = Value::String(util::now());
        meta["generation"] = json!(1);
        if let Some(map) = meta.as_object_mut() {
            map.remove("resourceVersion");
            map.remove("deletionTimestamp");
        }
        if dry_run {
            return match self.store.get(&key(rt), ns, &name) {
                Some(_) => Err(ApiError::already_exists(&rt.group, &rt.plural, &name)),
                None => Ok((self.present(rt, obj), warnings)),
            };
        }
        let created = self.store.create(&key(rt), obj).map_err(|e| map_store(e, rt, &name))?;
        defaults::after_write(self, rt, &created).await;
        Ok((self.present(rt, created), warnings))
    }

    fn check_kind(&self, rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
        if let Some(kind) = obj["kind"].as_str() {
            if kind != rt.kind {
                return Err(ApiError::bad_request(format!(
                    "the body is a {kind}, but the URL is for {}",
                    rt.plural
                )));
            }
        }
        Ok(())
    }

    fn check_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let namespaces = (String::new(), "namespaces".to_owned());
        match self.store.get(&namespaces, "", ns) {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if n["metadata"]["deletionTimestamp"].is_string() => Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Replaces an object (`subresource` `status` writes only the status).
    pub async fn update(
        &self,
        user: &User,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        subresource: Option<&str>,
    ) -> Result<(Value, Vec<String>), ApiError> {
        self.update_with(user, rt, ns, name, obj, subresource, false).await
    }

    /// [`Api::update`]; with `dry_run` nothing is written and the answer is the object
    /// that would have been stored (its resourceVersion still the current one).
    #[allow(clippy::too_many_arguments)]
    pub async fn update_with(
        &self,
        user: &User,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        subresource: Option<&str>,
        dry_run: bool,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let old = self
            .store
            .get(&key(rt), ns, name)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        let expect = match obj["metadata"]["resourceVersion"].as_str() {
            Some(rv) if !rv.is_empty() => Some(
                rv.parse::<u64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
            ),
            _ => None,
        };
        if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        self.write(user, rt, old, obj, expect, subresource, dry_run).await
    }

    /// Applies a patch (retrying internally on conflicts, as kube-apiserver does).
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        user: &User,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchType,
        body: &[u8],
        subresource: Option<&str>,
        field_manager: Option<&str>,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let opts = PatchOptions {
            field_manager,
            dry_run: false,
        };
        self.patch_with(user, rt, ns, name, kind, body, subresource, opts).await
    }

    /// [`Api::patch`] with options. A `metadata.resourceVersion` in the patched object
    /// is a precondition, as in kube-apiserver: 409 Conflict (no retry) when it is not
    /// the stored one.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch_with(
        &self,
        user: &User,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: PatchType,
        body: &[u8],
        subresource: Option<&str>,
        opts: PatchOptions<'_>,
    ) -> Result<(Value, Vec<String>), ApiError> {
        for _ in 0..5 {
            let Some(old) = self.store.get(&key(rt), ns, name) else {
                if kind == PatchType::Apply {
                    let mut obj = json!({"metadata": {"name": name}});
                    patch::apply(&mut obj, kind, body)?;
                    record_manager(&mut obj, opts.field_manager);
                    return self.create_with(user, rt, ns, obj, opts.dry_run).await;
                }
                return Err(ApiError::not_found(&rt.group, &rt.plural, name));
            };
            let mut new = old.clone();
            patch::apply(&mut new, kind, body)?;
            if kind == PatchType::Apply {
                record_manager(&mut new, opts.field_manager);
            }
            let stored = &old["metadata"]["resourceVersion"];
            match new["metadata"]["resourceVersion"].as_str() {
                Some(asked) if !asked.is_empty() && stored.as_str() != Some(asked) => {
                    return Err(ApiError::conflict(&rt.group, &rt.plural, name));
                }
                _ => {}
            }
            let expect = rv_of(&old);
            new["metadata"]["resourceVersion"] = stored.clone();
            match self.write(user, rt, old, new, expect, subresource, opts.dry_run).await {
                Err(e) if e.reason == "Conflict" => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(&rt.group, &rt.plural, name))
    }

    #[allow(clippy::too_many_arguments)]
    async fn write(
        &self,
        user: &User,
        rt: &ResourceType,
        old: Value,
        mut new: Value,
        expect: Option<u64>,
        subresource: Option<&str>,
        dry_run: bool,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let (_, name) = ns_name(&old);
        self.check_kind(rt, &new)?;
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        if subresource == Some("status") {
            let status = new["status"].clone();
            new = old.clone();
            new["status"] = status;
        } else if rt.has_status() {
            // Status is written through its subresource only. An object without one stays
            // without (not `status: null`, which would make a no-op patch a write).
            match old.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        // Identity fields are immutable.
        for field in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(field);
                    }
                }
            }
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(if spec_of(&new) != spec_of(&old) {
            generation + 1
        } else {
            generation
        });
        let warnings = if subresource.is_none() {
            let w = admission::admit(self, user, Operation::Update, rt, &mut new, Some(&old), dry_run).await?;
            defaults::validate(self, rt, &new)?;
            w
        } else {
            admission::admit_subresource(self, user, rt, subresource.unwrap_or_default(), &mut new, &old, dry_run)
                .await?
        };
        if dry_run {
            // The store's own check, without the write.
            if expect.is_some_and(|rv| Some(rv) != rv_of(&old)) {
                return Err(ApiError::conflict(&rt.group, &rt.plural, &name));
            }
            return Ok((self.present(rt, new), warnings));
        }
        let terminating = new["metadata"]["deletionTimestamp"].is_string();
        let finalizers_left = new["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        let written = self
            .store
            .update(&key(rt), new, expect)
            .map_err(|e| map_store(e, rt, &name))?;
        if terminating && !finalizers_left && rt.plural != "pods" {
            self.remove(rt, &written, &DeleteOptions::default()).await?;
        }
        defaults::after_write(self, rt, &written).await;
        Ok((self.present(rt, written), warnings))
    }

    /// Deletes an object: graceful for pods, deferred while finalizers remain, with
    /// garbage collection of dependents unless `Orphan`.
    pub async fn delete(
        &self,
        user: &User,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let _ = user;
        let obj = self
            .store
            .get(&key(rt), ns, name)
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        let finalizers = obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        let grace = if rt.group.is_empty() && rt.plural == "pods" {
            opts.grace_seconds
                .unwrap_or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30))
        } else {
            0
        };
        let scheduled = obj["spec"]["nodeName"].is_string()
            && obj["status"]["phase"] != "Succeeded"
            && obj["status"]["phase"] != "Failed";
        if finalizers || (grace > 0 && scheduled) {
            if obj["metadata"]["deletionTimestamp"].is_string() && (grace != 0 || finalizers) {
                return Ok(self.present(rt, obj));
            }
            // Mark for deletion; the kubelet (pods) or the finalizer's owner finishes it.
            let mut marked = obj.clone();
            marked["metadata"]["deletionTimestamp"] = Value::String(util::now());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            if opts.dry_run {
                return Ok(self.present(rt, marked));
            }
            let written = self
                .store
                .update(&key(rt), marked, None)
                .map_err(|e| map_store(e, rt, name))?;
            return Ok(self.present(rt, written));
        }
        if opts.dry_run {
            return Ok(self.present(rt, obj));
        }
        self.remove(rt, &obj, opts).await
    }

    async fn remove(&self, rt: &ResourceType, obj: &Value, opts: &DeleteOptions) -> Result<Value, ApiError> {
        let (ns, name) = ns_name(obj);
        let gone = self
            .store
            .delete(&key(rt), &ns, &name)
            .map_err(|e| map_store(e, rt, &name))?;
        defaults::after_delete(self, rt, &gone).await;
        let uid = gone["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        if !uid.is_empty() {
            self.collect_dependents(&uid, &ns, opts.propagation.as_deref() == Some("Orphan"))
                .await;
        }
        Ok(self.present(rt, gone))
    }

    /// Garbage collection: dependents whose ownerReference names `uid`.
    fn collect_dependents<'a>(
        &'a self,
        uid: &'a str,
        ns: &'a str,
        orphan: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let system = User::system("system:kube-controller-manager");
            for rt in self.registry.all() {
                let (items, _) = self.store.list(&key(&rt), if ns.is_empty() { None } else { Some(ns) });
                for item in items {
                    let owned = item["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid));
                    if !owned {
                        continue;
                    }
                    let (ins, iname) = ns_name(&item);
                    if orphan {
                        let mut freed = item.clone();
                        if let Some(refs) = freed["metadata"]["ownerReferences"].as_array_mut() {
                            refs.retain(|r| r["uid"] != uid);
                        }
                        let _ = self.store.update(&key(&rt), freed, None);
                    } else {
                        let _ = self.delete(&system, &rt, &ins, &iname, &DeleteOptions::default()).await;
                    }
                }
            }
        })
    }

    /// Deletes every object of `rt` in `ns` matching the selectors.
    pub async fn delete_collection(
        &self,
        user: &User,
        rt: &ResourceType,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let list = self.list(rt, ns, labels, fields);
        let mut deleted = Vec::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let (ins, name) = ns_name(item);
            if let Ok(gone) = self.delete(user, rt, &ins, &name, opts).await {
                deleted.push(gone);
            }
        }
        Ok(
            json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {}, "items": deleted}),
        )
    }
}

fn record_manager(obj: &mut Value, manager: Option<&str>) {
    let manager = manager.unwrap_or("unknown");
    let entry = json!({"manager": manager, "operation": "Apply", "apiVersion": obj["apiVersion"].clone(), "time": util::now(), "fieldsType": "FieldsV1"});
    let fields = &mut obj["metadata"]["managedFields"];
    if !fields.is_array() {
        *fields = json!([]);
    }
    if let Some(list) = fields.as_array_mut() {
        list.retain(|m| m["manager"] != manager);
        list.push(entry);
    }
}

impl ApiError {
    /// The same error with another message.
    pub fn with_message(mut self, message: String) -> ApiError {
        self.message = message;
        self
    }
}
