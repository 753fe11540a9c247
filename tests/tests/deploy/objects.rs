//! The objects of one region's manifests, as kustomize renders them, read
//! into the typed Kubernetes API (k8s-openapi) and cert-manager's (its v1
//! fields, here), every field the types do not know reported as a problem.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// cert-manager.io/v1 Certificate: the fields of its spec (cert-manager
/// 1.16), those drc's manifests use typed. Fields are read by Debug alone
/// where they exist only to be accepted.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Certificate {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: CertificateSpec,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_name: String,
    pub issuer_ref: IssuerRef,
    pub common_name: Option<String>,
    #[serde(default)]
    pub dns_names: Vec<String>,
    #[serde(default)]
    pub uris: Vec<String>,
    #[serde(default)]
    pub usages: Vec<String>,
    pub private_key: Option<PrivateKey>,
    pub duration: Option<String>,
    pub renew_before: Option<String>,
    pub renew_before_percentage: Option<i32>,
    pub ip_addresses: Option<Vec<String>>,
    pub email_addresses: Option<Vec<String>>,
    pub is_ca: Option<bool>,
    pub subject: Option<Value>,
    pub literal_subject: Option<String>,
    pub secret_template: Option<Value>,
    pub keystores: Option<Value>,
    pub revision_history_limit: Option<i32>,
    pub additional_output_formats: Option<Value>,
    pub name_constraints: Option<Value>,
    pub other_names: Option<Value>,
    pub encode_usages_in_request: Option<bool>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerRef {
    pub name: String,
    pub kind: Option<String>,
    pub group: Option<String>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrivateKey {
    pub algorithm: Option<String>,
    pub encoding: Option<String>,
    pub size: Option<u32>,
    pub rotation_policy: Option<String>,
}

/// cert-manager.io/v1 Issuer, with the CA issuer typed.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Issuer {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: IssuerSpec,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssuerSpec {
    pub ca: Option<CaIssuer>,
    pub acme: Option<Value>,
    pub self_signed: Option<Value>,
    pub vault: Option<Value>,
    pub venafi: Option<Value>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaIssuer {
    pub secret_name: String,
    pub crl_distribution_points: Option<Vec<String>>,
    pub ocsp_servers: Option<Vec<String>>,
    pub issuing_certificate_urls: Option<Vec<String>>,
}

/// Key usages cert-manager accepts.
pub const USAGES: [&str; 23] = [
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

pub enum Object {
    Namespace(Box<Namespace>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    Service(Box<Service>),
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    Pdb(Box<PodDisruptionBudget>),
    NetworkPolicy(Box<NetworkPolicy>),
    Certificate(Box<Certificate>),
    Issuer(Box<Issuer>),
}

/// `v` as `T`; every key `T` does not know is a problem (serde_ignored).
pub fn typed<T: DeserializeOwned>(v: &Value, what: &str) -> Result<T, Vec<String>> {
    let mut unknown = Vec::new();
    // serde_ignored marks each Option on the way with "?".
    let parsed =
        serde_ignored::deserialize(v.clone(), |path| unknown.push(format!("{what}: unknown field {}", path.to_string().replace(".?", ""))));
    match parsed {
        Ok(t) if unknown.is_empty() => Ok(t),
        Ok(_) => Err(unknown),
        Err(e) => Err(vec![format!("{what}: {e}")]),
    }
}

/// Every document of a YAML stream as JSON values.
pub fn documents(yaml: &str) -> Result<Vec<Value>, String> {
    yaml_serde::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).map_err(|e| e.to_string()))
        .filter(|v| !matches!(v, Ok(Value::Null)))
        .collect()
}

/// One object, by its apiVersion and kind; an unknown kind is a problem.
pub fn object(v: &Value) -> Result<Object, Vec<String>> {
    let kind = v["kind"].as_str().unwrap_or_default();
    let what = format!("{kind} {}", v["metadata"]["name"].as_str().unwrap_or("?"));
    Ok(match (v["apiVersion"].as_str().unwrap_or_default(), kind) {
        ("v1", "Namespace") => Object::Namespace(typed(v, &what)?),
        ("v1", "ConfigMap") => Object::ConfigMap(typed(v, &what)?),
        ("v1", "Secret") => Object::Secret(typed(v, &what)?),
        ("v1", "Service") => Object::Service(typed(v, &what)?),
        ("apps/v1", "Deployment") => Object::Deployment(typed(v, &what)?),
        ("apps/v1", "StatefulSet") => Object::StatefulSet(typed(v, &what)?),
        ("policy/v1", "PodDisruptionBudget") => Object::Pdb(typed(v, &what)?),
        ("networking.k8s.io/v1", "NetworkPolicy") => Object::NetworkPolicy(typed(v, &what)?),
        ("cert-manager.io/v1", "Certificate") => Object::Certificate(typed(v, &what)?),
        ("cert-manager.io/v1", "Issuer") => Object::Issuer(typed(v, &what)?),
        (api, _) => return Err(vec![format!("{what}: {api} {kind} is not a kind this test knows")]),
    })
}

/// A workload's pods: what selects them and what they run.
pub struct Workload<'a> {
    pub what: String,
    pub selector: Option<&'a LabelSelector>,
    pub labels: BTreeMap<String, String>,
    pub pod: &'a PodSpec,
    /// Volumes a StatefulSet's claim templates add.
    pub claims: Vec<String>,
}

impl Workload<'_> {
    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.pod.containers.iter().chain(self.pod.init_containers.iter().flatten())
    }

    /// Whether a container of these pods has `port` (a name or a number).
    pub fn has_port(&self, port: &IntOrString) -> bool {
        self.containers().flat_map(|c| c.ports.iter().flatten()).any(|p| match port {
            IntOrString::Int(n) => p.container_port == *n,
            IntOrString::String(name) => p.name.as_deref() == Some(name),
        })
    }
}

/// Whether `selector` selects pods labelled `labels` (matchLabels only:
/// drc's manifests use no expressions, and one would be reported).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    if selector.match_expressions.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err("matchExpressions are not checked by this test".into());
    }
    Ok(selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v)))
}

/// One region's rendered manifests.
pub struct Region {
    pub name: String,
    pub objects: Vec<Object>,
}

impl Region {
    pub fn workloads(&self) -> Vec<Workload<'_>> {
        let mut out = Vec::new();
        for o in &self.objects {
            let (what, spec_selector, template, claims) = match o {
                Object::Deployment(d) => {
                    let Some(spec) = d.spec.as_ref() else { continue };
                    (format!("Deployment {}", name(&d.metadata)), Some(&spec.selector), &spec.template, Vec::new())
                }
                Object::StatefulSet(s) => {
                    let Some(spec) = s.spec.as_ref() else { continue };
                    let claims = spec.volume_claim_templates.iter().flatten().map(|c| name(&c.metadata).to_string()).collect();
                    (format!("StatefulSet {}", name(&s.metadata)), Some(&spec.selector), &spec.template, claims)
                }
                _ => continue,
            };
            let Some(pod) = template.spec.as_ref() else { continue };
            let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
            out.push(Workload { what, selector: spec_selector, labels, pod, claims });
        }
        out
    }

    pub fn config_map(&self, wanted: &str) -> Option<&ConfigMap> {
        self.objects.iter().find_map(|o| match o {
            Object::ConfigMap(c) if name(&c.metadata) == wanted => Some(c.as_ref()),
            _ => None,
        })
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.objects.iter().filter_map(|o| match o {
            Object::Service(s) => Some(s.as_ref()),
            _ => None,
        })
    }

    pub fn certificates(&self) -> impl Iterator<Item = &Certificate> {
        self.objects.iter().filter_map(|o| match o {
            Object::Certificate(c) => Some(c.as_ref()),
            _ => None,
        })
    }

    /// The keys of Secret `wanted`: a Secret of the manifests, or the one
    /// cert-manager writes for a Certificate (tls.crt, tls.key, ca.crt).
    pub fn secret_keys(&self, wanted: &str) -> Option<Vec<String>> {
        self.objects.iter().find_map(|o| match o {
            Object::Secret(s) if name(&s.metadata) == wanted => Some(
                s.string_data.iter().flatten().map(|(k, _)| k.clone()).chain(s.data.iter().flatten().map(|(k, _)| k.clone())).collect(),
            ),
            Object::Certificate(c) if c.spec.secret_name == wanted => Some(vec!["tls.crt".into(), "tls.key".into(), "ca.crt".into()]),
            _ => None,
        })
    }

    /// The Certificate whose Secret is `secret`.
    pub fn certificate_for(&self, secret: &str) -> Option<&Certificate> {
        self.certificates().find(|c| c.spec.secret_name == secret)
    }
}

pub fn name(m: &ObjectMeta) -> &str {
    m.name.as_deref().unwrap_or_default()
}

/// Where a file a container reads comes from.
#[derive(Debug, PartialEq)]
pub enum Source {
    ConfigMap {
        name: String,
        key: String,
    },
    Secret {
        name: String,
        key: String,
    },
    /// A claim, an emptyDir the pod fills itself, or a volume of no check.
    Other(String),
}

/// The source of `path` in `container` of `pod`: the longest mount that
/// holds it, and the key within its volume. The emptyDir `secrets` that the
/// pods fill with copies of their `secrets-mounted` volume (mode 0600)
/// resolves to that volume.
pub fn source_of(pod: &PodSpec, container: &Container, path: &str) -> Result<Source, String> {
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| match &m.sub_path {
            Some(_) => path == m.mount_path,
            None => path.starts_with(&format!("{}/", m.mount_path.trim_end_matches('/'))),
        })
        .max_by_key(|m| m.mount_path.len())
        .ok_or_else(|| format!("{path}: no volume of container {} holds it", container.name))?;
    let key = match &mount.sub_path {
        Some(sub) => sub.clone(),
        None => path[mount.mount_path.trim_end_matches('/').len() + 1..].to_string(),
    };
    volume_source(pod, &mount.name, &key)
}

fn volume_source(pod: &PodSpec, volume: &str, key: &str) -> Result<Source, String> {
    let Some(v) = pod.volumes.iter().flatten().find(|v| v.name == volume) else {
        return Ok(Source::Other(format!("claim {volume}")));
    };
    if let Some(c) = &v.config_map {
        return Ok(Source::ConfigMap { name: c.name.clone(), key: item_key(c.items.as_deref(), key) });
    }
    if let Some(s) = &v.secret {
        return Ok(Source::Secret { name: s.secret_name.clone().unwrap_or_default(), key: item_key(s.items.as_deref(), key) });
    }
    if let Some(p) = &v.projected {
        for s in p.sources.iter().flatten().filter_map(|s| s.secret.as_ref()) {
            if let Some(item) = s.items.iter().flatten().find(|i| i.path == key) {
                return Ok(Source::Secret { name: s.name.clone(), key: item.key.clone() });
            }
        }
        return Err(format!("volume {volume} projects no file {key}"));
    }
    if v.empty_dir.is_some() && pod.volumes.iter().flatten().any(|m| m.name == format!("{volume}-mounted")) {
        return volume_source(pod, &format!("{volume}-mounted"), key);
    }
    Ok(Source::Other(format!("volume {volume}")))
}

fn item_key(items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>, path: &str) -> String {
    items.into_iter().flatten().find(|i| i.path == path).map_or_else(|| path.to_string(), |i| i.key.clone())
}
