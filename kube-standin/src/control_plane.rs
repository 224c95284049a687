//! The real control plane, for the tests that must not trust the stand-in:
//! etcd and kube-apiserver started by `scripts/control-plane.sh start`, which
//! exports `PORTICO_REAL_KUBECONFIG` (an admin kubeconfig) and
//! `PORTICO_REAL_AUDIT_LOG` (every request, by user).
//!
//! Tests on it share one cluster, so they run one at a time (the
//! `real-cluster` test group in `.config/nextest.toml`) and each starts from
//! [`ControlPlane::reset`]: no Services in `default`, no Nodes, no Events, no
//! controller Lease.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde::Deserialize;

/// The namespace of the controller's ServiceAccount (`deploy/rbac.yaml`).
pub const CONTROLLER_NAMESPACE: &str = "portico-system";
/// The ServiceAccount the controller runs as (`deploy/rbac.yaml`).
pub const CONTROLLER_ACCOUNT: &str = "portico";

/// What went wrong talking to the real control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(
        "PORTICO_REAL_KUBECONFIG is not set: start the real control plane first with `eval \"$(scripts/control-plane.sh start)\"` (./scripts/test.sh does this)"
    )]
    NotStarted,
    #[error("cannot load the control plane's kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: Box<kube::config::KubeconfigError>,
    },
    #[error("kubernetes API call failed: {what}")]
    Api {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest {path} is not valid: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("restarting kube-apiserver failed: {0}")]
    Restart(String),
    #[error("{user} is still not allowed to {grant:?} after 10 s")]
    NotAuthorized { user: String, grant: Box<Grant> },
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ControlPlaneError {
    let what = what.into();
    move |source| ControlPlaneError::Api {
        what,
        source: Box::new(source),
    }
}

/// A connection to the real control plane.
#[derive(Clone)]
pub struct ControlPlane {
    /// `system:masters`: what tests use to act as users and operators.
    pub admin: Client,
    config: kube::Config,
    audit_log: PathBuf,
    script: Option<PathBuf>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.config.cluster_url.to_string())
            .field("audit_log", &self.audit_log)
            .finish()
    }
}

impl ControlPlane {
    /// Connect to the control plane `scripts/control-plane.sh start` started.
    pub async fn connect() -> Result<ControlPlane, ControlPlaneError> {
        let path = std::env::var_os("PORTICO_REAL_KUBECONFIG")
            .map(PathBuf::from)
            .ok_or(ControlPlaneError::NotStarted)?;
        let kubeconfig_error = |source| ControlPlaneError::Kubeconfig {
            path: path.clone(),
            source: Box::new(source),
        };
        let kc = Kubeconfig::read_from(&path).map_err(kubeconfig_error)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(kubeconfig_error)?;
        let admin = Client::try_from(config.clone()).map_err(api_error("build admin client"))?;
        let audit_log = std::env::var_os("PORTICO_REAL_AUDIT_LOG")
            .map(PathBuf::from)
            .unwrap_or_else(|| path.with_file_name("audit.log"));
        Ok(ControlPlane {
            admin,
            config,
            audit_log,
            script: std::env::var_os("PORTICO_REAL_CONTROL_PLANE").map(PathBuf::from),
        })
    }

    /// How `admin` was made (to reach the server another way, e.g. through a
    /// relay a test can cut).
    pub fn admin_config(&self) -> kube::Config {
        self.config.clone()
    }

    /// Start from a clean slate: every Service but `default/kubernetes`, in
    /// every namespace (finalizers stripped first: no controller of a
    /// previous test runs any more), all Nodes, the Events of `default` and
    /// the controller's Lease go.
    pub async fn reset(&self) -> Result<(), ControlPlaneError> {
        let all: Api<Service> = Api::all(self.admin.clone());
        let is_apiserver = |s: &Service| {
            s.name_any() == "kubernetes" && s.namespace().as_deref() == Some("default")
        };
        for svc in all
            .list(&ListParams::default())
            .await
            .map_err(api_error("list services"))?
        {
            if is_apiserver(&svc) {
                continue;
            }
            let name = svc.name_any();
            let services: Api<Service> =
                Api::namespaced(self.admin.clone(), &svc.namespace().unwrap_or_default());
            if !svc.finalizers().is_empty() {
                let strip = serde_json::json!({"metadata": {"finalizers": null}});
                gone_is_ok(
                    services
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&strip))
                        .await,
                )
                .map_err(api_error(format!("strip finalizers of {name}")))?;
            }
            gone_is_ok(services.delete(&name, &DeleteParams::default()).await)
                .map_err(api_error(format!("delete service {name}")))?;
        }
        let nodes: Api<Node> = Api::all(self.admin.clone());
        gone_is_ok(
            nodes
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await,
        )
        .map_err(api_error("delete nodes"))?;
        let events: Api<Event> = Api::namespaced(self.admin.clone(), "default");
        gone_is_ok(
            events
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await,
        )
        .map_err(api_error("delete events"))?;
        let leases: Api<Lease> = Api::namespaced(self.admin.clone(), "kube-system");
        gone_is_ok(
            leases
                .delete("portico-controller", &DeleteParams::default())
                .await,
        )
        .map_err(api_error("delete lease"))?;
        // Deletion of a Service is immediate once its finalizers are gone;
        // wait until the list says so, so the next test starts clean.
        for _ in 0..100 {
            let left = all
                .list(&ListParams::default())
                .await
                .map_err(api_error("list services"))?
                .items
                .into_iter()
                .filter(|s| !is_apiserver(s))
                .count();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Apply a multi-document manifest with server-side apply, as `kubectl
    /// apply --server-side` would.
    pub async fn apply_manifest(&self, path: &Path) -> Result<(), ControlPlaneError> {
        let text = std::fs::read_to_string(path).map_err(|source| ControlPlaneError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                serde_json::Value::deserialize(doc).map_err(|e| ControlPlaneError::Manifest {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            if value.is_null() {
                continue;
            }
            self.apply_document(path, value).await?;
        }
        Ok(())
    }

    async fn apply_document(
        &self,
        path: &Path,
        value: serde_json::Value,
    ) -> Result<(), ControlPlaneError> {
        let manifest_error = |message: String| ControlPlaneError::Manifest {
            path: path.to_path_buf(),
            message,
        };
        let object: DynamicObject =
            serde_json::from_value(value).map_err(|e| manifest_error(e.to_string()))?;
        let types = object
            .types
            .clone()
            .ok_or_else(|| manifest_error("a document has no apiVersion/kind".into()))?;
        let gvk = GroupVersionKind::try_from(&types).map_err(|e| manifest_error(e.to_string()))?;
        let resource = ApiResource::from_gvk(&gvk);
        let name = object.name_any();
        let api: Api<DynamicObject> = match object.namespace() {
            Some(ns) => Api::namespaced_with(self.admin.clone(), &ns, &resource),
            None => Api::all_with(self.admin.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply("portico-tests").force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(api_error(format!("apply {} {name}", gvk.kind)))?;
        Ok(())
    }

    /// A client configuration that authenticates as `namespace/account`
    /// with a token from the TokenRequest API, as a pod's projected token
    /// would.
    pub async fn service_account_config(
        &self,
        namespace: &str,
        account: &str,
    ) -> Result<kube::Config, ControlPlaneError> {
        let token = self.service_account_token(namespace, account).await?;
        let mut config = self.config.clone();
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.into()),
            ..Default::default()
        };
        Ok(config)
    }

    /// A token for `namespace/account` from the TokenRequest API, valid for
    /// an hour.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        account: &str,
    ) -> Result<String, ControlPlaneError> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), namespace);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer = accounts
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .map_err(api_error(format!("token for {namespace}/{account}")))?;
        Ok(answer.status.and_then(|s| s.token).unwrap_or_default())
    }

    /// The controller's client configuration: `deploy/rbac.yaml` applied,
    /// then a token for its ServiceAccount. `manifest` is the path of that file.
    pub async fn controller_config(
        &self,
        manifest: &Path,
    ) -> Result<kube::Config, ControlPlaneError> {
        self.apply_manifest(manifest).await?;
        let user = Self::service_account_user(CONTROLLER_NAMESPACE, CONTROLLER_ACCOUNT);
        let grants = grants(manifest)?;
        self.wait_authorized(&user, &grants).await?;
        self.service_account_config(CONTROLLER_NAMESPACE, CONTROLLER_ACCOUNT)
            .await
    }

    /// The audit log's username of a ServiceAccount.
    pub fn service_account_user(namespace: &str, account: &str) -> String {
        format!("system:serviceaccount:{namespace}:{account}")
    }

    /// A position in the audit log: [`ControlPlane::audit_since`] returns
    /// what was logged after it.
    pub fn audit_mark(&self) -> Result<u64, ControlPlaneError> {
        std::fs::metadata(&self.audit_log)
            .map(|m| m.len())
            .map_err(|source| ControlPlaneError::Io {
                path: self.audit_log.clone(),
                source,
            })
    }

    /// Every complete request logged after `mark`.
    pub fn audit_since(&self, mark: u64) -> Result<Vec<AuditEvent>, ControlPlaneError> {
        let io_error = |source| ControlPlaneError::Io {
            path: self.audit_log.clone(),
            source,
        };
        let mut file = std::fs::File::open(&self.audit_log).map_err(io_error)?;
        file.seek(SeekFrom::Start(mark)).map_err(io_error)?;
        let mut events = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(io_error)?;
            // A line being written right now may be cut short: skip it.
            if let Ok(event) = serde_json::from_str::<AuditEvent>(&line)
                && event.stage == "ResponseComplete"
            {
                events.push(event);
            }
        }
        Ok(events)
    }

    /// When kube-apiserver was restarted: (stopping, ready again) pairs of
    /// RFC 3339 timestamps, as `scripts/control-plane.sh restart-apiserver`
    /// records them.
    pub fn restart_windows(&self) -> Vec<(String, String)> {
        let path = self.audit_log.with_file_name("restarts");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (from, to) = l.split_once(' ')?;
                Some((from.to_string(), to.to_string()))
            })
            .collect()
    }

    /// Wait until the RBAC authorizer lets `user` do each of `grants`:
    /// bindings just applied take a moment to reach its cache.
    pub async fn wait_authorized(
        &self,
        user: &str,
        grants: &[Grant],
    ) -> Result<(), ControlPlaneError> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
        };
        let reviews: Api<SubjectAccessReview> = Api::all(self.admin.clone());
        for grant in grants {
            let (resource, subresource) = match grant.resource.split_once('/') {
                Some((r, s)) => (r.to_string(), Some(s.to_string())),
                None => (grant.resource.clone(), None),
            };
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.to_string()),
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(grant.group.clone()),
                        resource: Some(resource),
                        subresource,
                        verb: Some(grant.verb.clone()),
                        namespace: grant.namespace.clone(),
                        name: grant.name.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let mut allowed = false;
            for _ in 0..100 {
                let answer = reviews
                    .create(&PostParams::default(), &review)
                    .await
                    .map_err(api_error("subject access review"))?;
                if answer.status.is_some_and(|s| s.allowed) {
                    allowed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if !allowed {
                return Err(ControlPlaneError::NotAuthorized {
                    user: user.to_string(),
                    grant: Box::new(grant.clone()),
                });
            }
        }
        Ok(())
    }

    /// Stop and start kube-apiserver (same etcd, same certificates): every
    /// open watch breaks, no state is lost. Waits until it is ready again.
    pub async fn restart_apiserver(&self) -> Result<(), ControlPlaneError> {
        let script = self.script.clone().ok_or_else(|| {
            ControlPlaneError::Restart("PORTICO_REAL_CONTROL_PLANE is not set".into())
        })?;
        let output = tokio::process::Command::new("bash")
            .arg(&script)
            .arg("restart-apiserver")
            .output()
            .await
            .map_err(|e| ControlPlaneError::Restart(e.to_string()))?;
        if !output.status.success() {
            return Err(ControlPlaneError::Restart(
                String::from_utf8_lossy(&output.stderr).into_owned(),
            ));
        }
        Ok(())
    }
}

/// One permission a manifest's Roles and ClusterRoles grant: API group,
/// `resource` or `resource/subresource`, verb, and where: the Role's
/// namespace (`None` for a ClusterRole) and one of the rule's
/// resourceNames (`None` when it names none: any object).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    pub group: String,
    pub resource: String,
    pub verb: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// Every permission the Roles and ClusterRoles of `manifest` grant.
pub fn grants(manifest: &Path) -> Result<Vec<Grant>, ControlPlaneError> {
    use k8s_openapi::api::rbac::v1::PolicyRule;
    let text = std::fs::read_to_string(manifest).map_err(|source| ControlPlaneError::Io {
        path: manifest.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value =
            serde_json::Value::deserialize(doc).map_err(|e| ControlPlaneError::Manifest {
                path: manifest.to_path_buf(),
                message: e.to_string(),
            })?;
        if !matches!(value["kind"].as_str(), Some("Role" | "ClusterRole")) {
            continue;
        }
        let namespace = value["metadata"]["namespace"].as_str().map(str::to_string);
        let rules: Vec<PolicyRule> =
            serde_json::from_value(value["rules"].clone()).map_err(|e| {
                ControlPlaneError::Manifest {
                    path: manifest.to_path_buf(),
                    message: e.to_string(),
                }
            })?;
        for rule in rules {
            // No resourceNames: any name. Otherwise one grant per name.
            let names: Vec<Option<String>> = match rule.resource_names.as_deref() {
                None | Some([]) => vec![None],
                Some(names) => names.iter().cloned().map(Some).collect(),
            };
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        for name in &names {
                            out.push(Grant {
                                group: group.clone(),
                                resource: resource.clone(),
                                verb: verb.clone(),
                                namespace: namespace.clone(),
                                name: name.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

fn gone_is_ok<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// One line of the audit log (`audit.k8s.io/v1` Event), the fields tests use.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    pub stage: String,
    /// RFC 3339 with microseconds, UTC.
    pub request_received_timestamp: String,
    pub verb: String,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub user: AuditUser,
    #[serde(default)]
    pub object_ref: Option<AuditObjectRef>,
    #[serde(default)]
    pub response_status: Option<AuditResponseStatus>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditUser {
    pub username: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditObjectRef {
    #[serde(default)]
    pub resource: Option<String>,
    #[serde(default)]
    pub subresource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub api_group: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuditResponseStatus {
    #[serde(default)]
    pub code: Option<u16>,
}

impl AuditEvent {
    /// The HTTP status of the answer.
    pub fn code(&self) -> Option<u16> {
        self.response_status.as_ref()?.code
    }

    /// `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// `resource` or `resource/subresource`.
    pub fn resource(&self) -> String {
        let Some(object) = &self.object_ref else {
            return String::new();
        };
        let resource = object.resource.clone().unwrap_or_default();
        match &object.subresource {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource,
        }
    }
}
