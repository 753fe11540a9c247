//! `deploy/`, checked as hard as can be without a Kubernetes cluster or a
//! container daemon: every region's manifests, as kustomize renders them,
//! read into the typed Kubernetes API with no unknown field; every
//! selector selects, every reference resolves (ConfigMaps, Secrets and their
//! keys, Services, ports, volumes, the issuer); the drc configuration in each
//! ConfigMap passes drc's own parser and matches the certificate mounted
//! beside it; the regions agree with the topology; and the Containerfile
//! copies what the workspace builds.

#[path = "deploy/objects.rs"]
mod objects;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use drc_coordinator::config::CoordinatorConfig;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use objects::{name, object, selects, source_of, Object, Region, Source, USAGES};

const REGIONS: [&str; 3] = ["eu-west", "eu-central", "us-east"];
const CLUSTER: &str = "n8n-drc";
const NAMESPACE: &str = "drc";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl kustomize`, or a standalone `kustomize build` (scripts/test
/// installs one where kubectl is missing).
fn kustomize(dir: &Path) -> String {
    let tries: [(&str, &[&str]); 2] = [("kubectl", &["kustomize"]), ("kustomize", &["build"])];
    for (program, args) in tries {
        match Command::new(program).args(args).arg(dir).output() {
            Ok(out) if out.status.success() => return String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => panic!("{program} {args:?} {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr)),
            Err(_) => continue,
        }
    }
    panic!("neither kubectl nor kustomize is installed: run scripts/test, which installs kustomize");
}

fn region(r: &str) -> Region {
    let yaml = kustomize(&repo().join("deploy/kubernetes/overlays").join(r));
    let docs = objects::documents(&yaml).unwrap_or_else(|e| panic!("{r}: {e}"));
    let mut problems = Vec::new();
    let mut objects = Vec::new();
    for d in &docs {
        match object(d) {
            Ok(o) => objects.push(o),
            Err(p) => problems.extend(p),
        }
    }
    assert!(problems.is_empty(), "{r}:\n  {}", problems.join("\n  "));
    Region { name: r.to_string(), objects }
}

fn regions() -> Vec<Region> {
    REGIONS.iter().map(|r| region(r)).collect()
}

#[test]
fn every_object_of_every_region_parses_into_the_typed_kubernetes_api_with_no_unknown_field() {
    for r in regions() {
        let kinds: BTreeSet<&str> = r
            .objects
            .iter()
            .map(|o| match o {
                Object::Namespace(_) => "Namespace",
                Object::ConfigMap(_) => "ConfigMap",
                Object::Secret(_) => "Secret",
                Object::Service(_) => "Service",
                Object::Deployment(_) => "Deployment",
                Object::StatefulSet(_) => "StatefulSet",
                Object::Pdb(_) => "PodDisruptionBudget",
                Object::NetworkPolicy(_) => "NetworkPolicy",
                Object::Certificate(_) => "Certificate",
                Object::Issuer(_) => "Issuer",
            })
            .collect();
        assert_eq!(kinds.len(), 10, "{}: {kinds:?}", r.name);
        assert_eq!(r.workloads().len(), 5, "{}: a coordinator, PostgreSQL, Redis and two proxies", r.name);
    }
}

#[test]
fn a_misspelt_field_is_reported_not_ignored() {
    let doc = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: pg\nspec:\n  replica: 1\n  selector: {}\n  template:\n    spec:\n      containers:\n        - name: a\n          imagePullPolice: Always\n";
    let v = objects::documents(doc).expect("yaml");
    let Err(problems) = object(&v[0]) else { panic!("a misspelt field was accepted") };
    let all = problems.join("\n");
    assert!(all.contains("spec.replica") && all.contains("imagePullPolice"), "{all}");
}

#[test]
fn every_reference_resolves_and_every_selector_selects() {
    for r in regions() {
        let mut p = Vec::new();
        check_workloads(&r, &mut p);
        check_services(&r, &mut p);
        check_policies(&r, &mut p);
        check_certificates(&r, &mut p);
        for o in &r.objects {
            let meta = match o {
                Object::Namespace(n) => {
                    if name(&n.metadata) != NAMESPACE {
                        p.push(format!("Namespace {}: the manifests live in {NAMESPACE}", name(&n.metadata)));
                    }
                    continue;
                }
                Object::ConfigMap(c) => &c.metadata,
                Object::Secret(s) => &s.metadata,
                Object::Service(s) => &s.metadata,
                Object::Deployment(d) => &d.metadata,
                Object::StatefulSet(s) => &s.metadata,
                Object::Pdb(d) => &d.metadata,
                Object::NetworkPolicy(n) => &n.metadata,
                Object::Certificate(c) => &c.metadata,
                Object::Issuer(i) => &i.metadata,
            };
            if meta.namespace.as_deref() != Some(NAMESPACE) {
                p.push(format!("{}: not in namespace {NAMESPACE}", name(meta)));
            }
        }
        assert!(p.is_empty(), "{}:\n  {}", r.name, p.join("\n  "));
    }
}

fn check_workloads(r: &Region, p: &mut Vec<String>) {
    for w in r.workloads() {
        match w.selector.map(|s| selects(s, &w.labels)) {
            Some(Ok(true)) => {}
            other => p.push(format!("{}: its selector does not select its own pods ({other:?})", w.what)),
        }
        let volumes: BTreeSet<String> = w.pod.volumes.iter().flatten().map(|v| v.name.clone()).chain(w.claims.iter().cloned()).collect();
        for c in w.containers() {
            for m in c.volume_mounts.iter().flatten() {
                if !volumes.contains(&m.name) {
                    p.push(format!("{} container {}: mounts volume {} that the pod does not have", w.what, c.name, m.name));
                }
                // A file mounted alone must exist in its ConfigMap or Secret.
                if m.sub_path.is_some() {
                    if let Err(e) = resolve(r, w.pod, c, &m.mount_path) {
                        p.push(format!("{} container {}: {e}", w.what, c.name));
                    }
                }
            }
            for probe in [&c.readiness_probe, &c.liveness_probe].into_iter().flatten() {
                if let Some(get) = &probe.http_get {
                    if !w.has_port(&get.port) {
                        p.push(format!("{} container {}: probe port {:?} is none of its ports", w.what, c.name, get.port));
                    }
                }
            }
            if c.security_context.as_ref().and_then(|s| s.allow_privilege_escalation) != Some(false) {
                p.push(format!("{} container {}: allowPrivilegeEscalation is not false", w.what, c.name));
            }
        }
        for v in w.pod.volumes.iter().flatten() {
            if let Some(c) = &v.config_map {
                match r.config_map(&c.name) {
                    None => p.push(format!("{}: volume {} names ConfigMap {} that does not exist", w.what, v.name, c.name)),
                    Some(cm) => {
                        for item in c.items.iter().flatten() {
                            if !cm.data.as_ref().is_some_and(|d| d.contains_key(&item.key)) {
                                p.push(format!("{}: ConfigMap {} has no key {}", w.what, c.name, item.key));
                            }
                        }
                    }
                }
            }
            let mut secrets: Vec<(String, Option<String>)> = Vec::new();
            if let Some(s) = &v.secret {
                secrets.push((s.secret_name.clone().unwrap_or_default(), None));
            }
            for s in v.projected.iter().flat_map(|pr| pr.sources.iter().flatten()).filter_map(|s| s.secret.as_ref()) {
                secrets.extend(s.items.iter().flatten().map(|i| (s.name.clone(), Some(i.key.clone()))));
            }
            for (secret, key) in secrets {
                match (r.secret_keys(&secret), key) {
                    (None, _) => p.push(format!(
                        "{}: volume {} names Secret {secret}, which neither exists nor comes from a Certificate",
                        w.what, v.name
                    )),
                    (Some(keys), Some(k)) if !keys.contains(&k) => p.push(format!("{}: Secret {secret} has no key {k}", w.what)),
                    _ => {}
                }
            }
        }
    }
    for o in &r.objects {
        if let Object::StatefulSet(s) = o {
            let service = s.spec.as_ref().map(|sp| sp.service_name.clone().unwrap_or_default()).unwrap_or_default();
            let headless = r
                .services()
                .any(|svc| name(&svc.metadata) == service && svc.spec.as_ref().and_then(|sp| sp.cluster_ip.as_deref()) == Some("None"));
            if !headless {
                p.push(format!("StatefulSet {}: serviceName {service} is no headless Service", name(&s.metadata)));
            }
        }
    }
}

/// The source of a file a container reads, checked to exist.
fn resolve(
    r: &Region,
    pod: &k8s_openapi::api::core::v1::PodSpec,
    c: &k8s_openapi::api::core::v1::Container,
    path: &str,
) -> Result<Source, String> {
    let source = source_of(pod, c, path)?;
    match &source {
        Source::ConfigMap { name, key } => {
            let cm = r.config_map(name).ok_or_else(|| format!("{path}: ConfigMap {name} does not exist"))?;
            if !cm.data.as_ref().is_some_and(|d| d.contains_key(key)) {
                return Err(format!("{path}: ConfigMap {name} has no key {key}"));
            }
        }
        Source::Secret { name, key } => {
            let keys = r.secret_keys(name).ok_or_else(|| format!("{path}: Secret {name} does not exist"))?;
            if !keys.contains(key) {
                return Err(format!("{path}: Secret {name} has no key {key}"));
            }
        }
        Source::Other(_) => {}
    }
    Ok(source)
}

fn check_services(r: &Region, p: &mut Vec<String>) {
    let workloads = r.workloads();
    for s in r.services() {
        let what = format!("Service {}", name(&s.metadata));
        let Some(spec) = &s.spec else { continue };
        let selector = spec.selector.clone().unwrap_or_default();
        let selected: Vec<_> = workloads.iter().filter(|w| selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))).collect();
        if selected.is_empty() {
            p.push(format!("{what}: selects no pods"));
        }
        for port in spec.ports.iter().flatten() {
            let target = port.target_port.clone().unwrap_or(IntOrString::Int(port.port));
            for w in &selected {
                if !w.has_port(&target) {
                    p.push(format!("{what}: port {:?} targets {target:?}, which {} does not have", port.name, w.what));
                }
            }
        }
    }
    for o in &r.objects {
        if let Object::Pdb(d) = o {
            let selector = d.spec.as_ref().and_then(|s| s.selector.as_ref());
            if !workloads.iter().any(|w| selector.is_some_and(|s| selects(s, &w.labels) == Ok(true))) {
                p.push(format!("PodDisruptionBudget {}: selects no pods", name(&d.metadata)));
            }
        }
    }
}

fn check_policies(r: &Region, p: &mut Vec<String>) {
    let workloads = r.workloads();
    for o in &r.objects {
        let Object::NetworkPolicy(n) = o else { continue };
        let what = format!("NetworkPolicy {}", name(&n.metadata));
        let Some(spec) = &n.spec else { continue };
        let every = Default::default();
        let selector = spec.pod_selector.as_ref().unwrap_or(&every);
        let selected: Vec<_> = workloads.iter().filter(|w| selects(selector, &w.labels) == Ok(true)).collect();
        if selected.is_empty() {
            p.push(format!("{what}: selects no pods"));
        }
        for rule in spec.ingress.iter().flatten() {
            for peer in rule.from.iter().flatten() {
                if let (Some(sel), None) = (&peer.pod_selector, &peer.namespace_selector) {
                    if !workloads.iter().any(|w| selects(sel, &w.labels) == Ok(true)) {
                        p.push(format!("{what}: lets in pods that no workload runs ({:?})", sel.match_labels));
                    }
                }
            }
            // A named port applies to the selected pods that have it.
            for port in rule.ports.iter().flatten().filter_map(|pt| pt.port.as_ref()) {
                if !selected.iter().any(|w| w.has_port(port)) {
                    p.push(format!("{what}: port {port:?} is a port of none of the pods it selects"));
                }
            }
        }
    }
}

fn check_certificates(r: &Region, p: &mut Vec<String>) {
    let issuers: BTreeMap<&str, &objects::Issuer> = r
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Issuer(i) => Some((name(&i.metadata), i.as_ref())),
            _ => None,
        })
        .collect();
    for i in issuers.values() {
        let secret = i.spec.ca.as_ref().map(|ca| ca.secret_name.clone()).unwrap_or_default();
        if !r.secret_keys(&secret).is_some_and(|k| k.contains(&"tls.crt".to_string()) && k.contains(&"tls.key".to_string())) {
            p.push(format!("Issuer {}: CA Secret {secret:?} with tls.crt and tls.key is missing", name(&i.metadata)));
        }
    }
    for c in r.certificates() {
        let what = format!("Certificate {}", name(&c.metadata));
        let issuer = &c.spec.issuer_ref;
        if issuer.kind.as_deref() != Some("Issuer")
            || issuer.group.as_deref() != Some("cert-manager.io")
            || !issuers.contains_key(issuer.name.as_str())
        {
            p.push(format!("{what}: issuerRef {issuer:?} is no Issuer of the manifests"));
        }
        if c.spec.uris.len() != 1 || c.spec.dns_names.is_empty() {
            p.push(format!("{what}: it must name one drc identity and its host names ({:?}, {:?})", c.spec.uris, c.spec.dns_names));
        }
        for uri in &c.spec.uris {
            match drc_tls::Identity::parse_uri(uri) {
                Ok(id) if id.cluster == CLUSTER => {}
                other => p.push(format!("{what}: {uri} is no drc identity of cluster {CLUSTER}: {other:?}")),
            }
        }
        for u in &c.spec.usages {
            if !USAGES.contains(&u.as_str()) {
                p.push(format!("{what}: usage {u:?} is not one cert-manager knows"));
            }
        }
        if let Some(k) = &c.spec.private_key {
            if !matches!(k.algorithm.as_deref(), None | Some("RSA" | "ECDSA" | "Ed25519"))
                || !matches!(k.rotation_policy.as_deref(), None | Some("Never" | "Always"))
            {
                p.push(format!("{what}: privateKey {k:?}"));
            }
        }
    }
}

/// The container of the workload named `workload` that runs `program`, and
/// the file its `--config=` names.
fn config_of<'a>(r: &'a Region, workload: &str) -> (objects::Workload<'a>, String) {
    let w = r
        .workloads()
        .into_iter()
        .find(|w| w.what.ends_with(&format!(" {workload}")))
        .unwrap_or_else(|| panic!("{}: no workload {workload}", r.name));
    let path = w.pod.containers[0]
        .command
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix("--config=").map(str::to_string))
        .unwrap_or_else(|| panic!("{workload}: no --config="));
    (w, path)
}

/// The text of file `path` as `workload`'s first container sees it.
fn file_text(r: &Region, w: &objects::Workload, path: &str) -> String {
    match resolve(r, w.pod, &w.pod.containers[0], path) {
        Ok(Source::ConfigMap { name, key }) => r.config_map(&name).and_then(|c| c.data.as_ref()?.get(&key).cloned()).unwrap_or_default(),
        other => panic!("{}: {path} is no ConfigMap file: {other:?}", w.what),
    }
}

/// The drc identity of the certificate mounted where `cert` points.
fn identity_at(r: &Region, w: &objects::Workload, cert: &str) -> String {
    match resolve(r, w.pod, &w.pod.containers[0], cert) {
        Ok(Source::Secret { name, key }) if key == "tls.crt" => r
            .certificate_for(&name)
            .and_then(|c| c.spec.uris.first().cloned())
            .unwrap_or_else(|| panic!("{}: Secret {name} comes from no Certificate", w.what)),
        other => panic!("{}: {cert}: {other:?}", w.what),
    }
}

#[test]
fn the_drc_configuration_in_each_config_map_passes_drcs_own_parser_and_matches_its_certificate() {
    for r in regions() {
        let (w, path) = config_of(&r, &format!("drc-coordinator-{}", r.name));
        let cfg = CoordinatorConfig::from_toml(&file_text(&r, &w, &path)).unwrap_or_else(|e| panic!("{}: {e}", r.name));
        cfg.validate().unwrap_or_else(|e| panic!("{}: {e}", r.name));
        let tls = cfg.tls.clone().expect("tls");
        for f in [&tls.ca, &tls.cert, &tls.key] {
            resolve(&r, w.pod, &w.pod.containers[0], &f.display().to_string()).unwrap_or_else(|e| panic!("{}: {e}", r.name));
        }
        assert_eq!(identity_at(&r, &w, &tls.cert.display().to_string()), format!("drc://{CLUSTER}/peer/{}", cfg.node_id));
        assert_eq!(cfg.cluster_id, CLUSTER);
        let own = format!("drc-coordinator-{}.{NAMESPACE}.svc.clusterset.local:7400", r.name);
        assert_eq!(cfg.advertise(), own, "{}: advertises its Service's clusterset name", r.name);

        for (workload, member) in
            [(format!("pg-{}", r.name), format!("pg-{}", r.name)), (format!("redis-{}", r.name), format!("redis-{}", r.name))]
        {
            let (w, path) = config_of(&r, &workload);
            let text = file_text(&r, &w, &path);
            // drc-agent's own parser and checks, away from the host: the
            // files it names are checked against the pod's volumes instead.
            let file = tempfile::NamedTempFile::new().expect("tempfile");
            std::fs::write(file.path(), &text).expect("write");
            let out = Command::new(drc_tests::bin("drc-agent"))
                .arg("--config")
                .arg(file.path())
                .args(["check", "--offline"])
                .output()
                .expect("drc-agent");
            assert!(out.status.success(), "{workload}: {}", String::from_utf8_lossy(&out.stderr));
            let agent: toml::Value = toml::from_str(&text).expect("toml");
            assert_eq!(agent["member_id"].as_str(), Some(member.as_str()));
            assert_eq!(agent["region"].as_str(), Some(r.name.as_str()));
            let endpoints: Vec<String> =
                agent["endpoints"].as_array().expect("endpoints").iter().filter_map(|e| e.as_str().map(str::to_string)).collect();
            assert_eq!(
                endpoints,
                cfg.peers.iter().map(|p| p.address.clone()).collect::<Vec<_>>(),
                "{workload}: its endpoints are the coordinators"
            );
            let mut files = vec![
                agent["tls"]["ca"].clone(),
                agent["tls"]["cert"].clone(),
                agent["tls"]["key"].clone(),
                agent["connection"]["password_file"].clone(),
            ];
            files.extend(agent.get("postgres").and_then(|p| p.get("replication_passfile")).cloned());
            files.extend(agent.get("backup").and_then(|b| b.get("identity_file")).cloned());
            files.extend(agent["destinations"].as_array().into_iter().flatten().filter_map(|d| d.get("secret_key_file").cloned()));
            for f in files {
                let f = f.as_str().expect("a path");
                resolve(&r, w.pod, &w.pod.containers[0], f).unwrap_or_else(|e| panic!("{workload}: {e}"));
            }
            let cert = agent["tls"]["cert"].as_str().expect("cert");
            assert_eq!(identity_at(&r, &w, cert), format!("drc://{CLUSTER}/agent/{member}"));
            // The epoch that decides the supervised server's role lives on
            // the data's own claim: it survives exactly as long as the data.
            let state = format!("{}/{member}.state.json", agent["state_dir"].as_str().expect("state_dir"));
            match source_of(w.pod, &w.pod.containers[0], &state) {
                Ok(Source::Other(v)) if v == "claim data" => {}
                other => panic!("{workload}: state_dir is not on the data's volume: {other:?}"),
            }
        }
    }
}

#[test]
fn the_regions_agree_on_the_coordinators_the_topology_and_the_proxies() {
    let all = regions();
    let mut peers = Vec::new();
    for r in &all {
        let (w, path) = config_of(r, &format!("drc-coordinator-{}", r.name));
        let cfg = CoordinatorConfig::from_toml(&file_text(r, &w, &path)).expect("coordinator.toml");
        peers.push(cfg.peers.iter().map(|p| (p.id, p.address.clone(), p.region.clone())).collect::<Vec<_>>());
        let own = cfg.peers.iter().find(|p| p.id == cfg.node_id).expect("its own peer entry");
        assert_eq!(own.region.as_deref(), Some(r.name.as_str()));
    }
    assert!(peers.windows(2).all(|w| w[0] == w[1]), "every region lists the same founding peers: {peers:?}");
    assert_eq!(peers[0].len(), REGIONS.len());

    // The topology the operator applies: the same in every region, and every
    // member's address is its Service's clusterset name in its region.
    let texts: BTreeSet<String> = all
        .iter()
        .map(|r| r.config_map("drc-topology").and_then(|c| c.data.as_ref()?.get("topology.toml").cloned()).expect("drc-topology"))
        .collect();
    assert_eq!(texts.len(), 1, "one topology");
    let text = texts.into_iter().next().expect("topology");
    let topology = drc_model::topology::parse::parse_topology(&text).unwrap_or_else(|e| panic!("topology.toml: {e:?}"));
    for (id, m) in &topology.members {
        let r = all.iter().find(|r| r.name == m.region).unwrap_or_else(|| panic!("{id}: no overlay for region {}", m.region));
        let (host, port) = m.address.rsplit_once(':').expect("host:port");
        let service = host
            .strip_suffix(&format!(".{NAMESPACE}.svc.clusterset.local"))
            .unwrap_or_else(|| panic!("{id}: {host} is no clusterset name"));
        assert_eq!(service, id, "a member's Service is named as the member");
        let svc = r.services().find(|s| name(&s.metadata) == service).unwrap_or_else(|| panic!("{id}: no Service {service} in {}", r.name));
        assert!(
            svc.spec.iter().flat_map(|s| s.ports.iter().flatten()).any(|p| p.port.to_string() == port),
            "{id}: Service {service} has no port {port}"
        );
    }
    // Every agent supervises its member, and names as the first primary a
    // member of its own cluster in the topology.
    for r in &all {
        for kind in ["pg", "redis"] {
            let (w, path) = config_of(r, &format!("{kind}-{}", r.name));
            let agent: toml::Value = toml::from_str(&file_text(r, &w, &path)).expect("agent.toml");
            let first = agent["supervise"]["first_primary"].as_str().unwrap_or_else(|| panic!("{}: no supervise.first_primary", w.what));
            let member = topology.members.get(first).unwrap_or_else(|| panic!("{}: first_primary {first} is no member", w.what));
            assert_eq!(Some(member.cluster.as_str()), agent["cluster"].as_str(), "{}: first_primary of another cluster", w.what);
        }
    }
    for r in &all {
        for w in r.workloads().iter().filter(|w| w.what.starts_with("Deployment drc-proxy")) {
            let args: Vec<&str> = w.pod.containers[0].command.iter().flatten().map(String::as_str).collect();
            let flag =
                |f: &str| args.iter().find_map(|a| a.strip_prefix(&format!("--{f}="))).unwrap_or_else(|| panic!("{}: no --{f}", w.what));
            assert!(topology.clusters.contains_key(flag("cluster")), "{}: --cluster {}", w.what, flag("cluster"));
            let endpoints: Vec<String> = flag("endpoints").split(',').map(str::to_string).collect();
            assert_eq!(endpoints, peers[0].iter().map(|p| p.1.clone()).collect::<Vec<_>>(), "{}: --endpoints", w.what);
            for f in ["ca", "cert", "key"] {
                resolve(r, w.pod, &w.pod.containers[0], flag(f)).unwrap_or_else(|e| panic!("{}: {e}", w.what));
            }
            let id = identity_at(r, w, flag("cert"));
            assert!(id.starts_with(&format!("drc://{CLUSTER}/viewer/")), "{}: the proxy reads as a viewer: {id}", w.what);
        }
    }
}

#[test]
fn the_containerfile_copies_what_the_workspace_builds_and_runs_the_users_the_manifests_name() {
    let text = std::fs::read_to_string(repo().join("deploy/Containerfile")).expect("Containerfile");
    let copied: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .flat_map(|l| l.split_whitespace().filter_map(|w| w.strip_prefix("target/release/").map(str::to_string)))
        .collect();
    let want: BTreeSet<String> = ["drc-coordinator", "drc-agent", "drctl", "drc-proxy"].map(String::from).into();
    assert_eq!(copied, want);
    for b in &want {
        assert!(drc_tests::bin(b).exists(), "{b} is a binary of the workspace");
    }
    // The image tag the manifests run is the workspace's version.
    let version = env!("CARGO_PKG_VERSION");
    assert!(text.contains(&format!("drc:{version}")), "the Containerfile's build command tags drc:{version}");
    // Every user the manifests run as is created, with that uid, by the image.
    let users: BTreeMap<u32, String> = text
        .split("useradd")
        .skip(1)
        .filter_map(|part| {
            let words: Vec<&str> = part.split_whitespace().take_while(|w| *w != "&&" && *w != "\\").collect();
            let uid = words.iter().position(|w| *w == "--uid").and_then(|i| words.get(i + 1)?.parse().ok())?;
            Some((uid, words.last()?.to_string()))
        })
        .collect();
    for r in regions() {
        for w in r.workloads() {
            let image = w.pod.containers[0].image.clone().unwrap_or_default();
            assert_eq!(image, format!("drc:{version}"), "{}", w.what);
            let uid = w.pod.security_context.as_ref().and_then(|s| s.run_as_user).unwrap_or_else(|| panic!("{}: no runAsUser", w.what));
            assert!(users.contains_key(&(uid as u32)), "{}: runs as uid {uid}, which the image does not create ({users:?})", w.what);
        }
    }
    // What it installs exists in Debian 12 (where apt-cache runs).
    if let Ok(out) =
        Command::new("apt-cache").args(["show", "--no-all-versions", "postgresql-15", "redis-server", "tini", "ca-certificates"]).output()
    {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}
