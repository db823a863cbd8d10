//! The deployment files say what the service needs: every YAML file under deploy/k8s/
//! (Kubernetes), docker/compose*.yaml and docker/Dockerfile. Nothing is applied or run here
//! (scripts/docker-check.sh runs the image and the compose stack for real); these checks pin
//! the fields that are easy to break by editing one file and not the others: the journal's
//! volume at AGP_DATA_DIR, the probes' paths, grace periods above the journal drain,
//! resources, the non-root user, selectors, the HPA target, secrets, the image name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The image's data directory (ENV AGP_DATA_DIR); the journal is `$AGP_DATA_DIR/journal`.
const DATA_DIR: &str = "/var/lib/agp";
/// The image's runtime user and group.
const UID: i64 = 10001;
/// At most this long the binary drains its journal to Postgres after SIGTERM.
const JOURNAL_DRAIN_SECS: i64 = 10;
/// The image name every container runs.
const IMAGE: &str = "agp-rerank";
const SERVE: &str = "agp-serve";
const WORKER: &str = "agp-worker";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML text (merge keys applied), as JSON values; `origin` names it in
/// errors.
fn yaml_docs_str(text: &str, origin: &str) -> Vec<Value> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let mut v = serde_norway::Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{origin}: not valid YAML: {e}"));
        v.apply_merge()
            .unwrap_or_else(|e| panic!("{origin}: merge keys: {e}"));
        if v.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(&v).unwrap_or_else(|e| panic!("{origin}: {e}")));
    }
    docs
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    yaml_docs_str(&read(path), &path.display().to_string())
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

/// The Kubernetes manifests: (file name, document) for every document of every YAML file.
struct K8s {
    docs: Vec<(String, Value)>,
}

impl K8s {
    /// Every *.yaml / *.yml file (what `kubectl apply -f deploy/k8s/` reads) and the
    /// extensionless `Kustomization` (what `kubectl apply -k deploy/k8s` reads).
    fn load() -> K8s {
        let dir = root().join("deploy/k8s");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| {
                matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                    || p.file_name().is_some_and(|n| n == "Kustomization")
            })
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            for d in yaml_docs(&f) {
                docs.push((name.clone(), d));
            }
        }
        K8s { docs }
    }

    fn resources(&self) -> impl Iterator<Item = &Value> {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["kind"] != "Kustomization")
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.resources().filter(|d| d["kind"] == kind).collect()
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.resources()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| {
                let have: Vec<String> = self
                    .resources()
                    .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
                    .collect();
                panic!("no {kind} named {name} in deploy/k8s (have: {have:?})")
            })
    }

    /// StatefulSets, Deployments, DaemonSets, Jobs.
    fn workloads(&self) -> Vec<&Value> {
        self.resources()
            .filter(|d| d["spec"]["template"]["spec"].is_object())
            .collect()
    }

    /// The value a container sees for `name`: its own env, else a ConfigMap it loads whole.
    fn env(&self, container: &Value, name: &str) -> Option<String> {
        if let Some(e) = env_entry(container, name) {
            return e["value"].as_str().map(str::to_string);
        }
        for from in container["envFrom"].as_array().into_iter().flatten() {
            if let Some(cm) = from["configMapRef"]["name"].as_str()
                && let Some(v) = self.get("ConfigMap", cm)["data"][name].as_str()
            {
                return Some(v.to_string());
            }
        }
        None
    }
}

fn name(d: &Value) -> &str {
    s(&d["metadata"]["name"], "metadata.name")
}

fn pod_spec(w: &Value) -> &Value {
    &w["spec"]["template"]["spec"]
}

fn containers(w: &Value) -> Vec<&Value> {
    let spec = pod_spec(w);
    let mut all: Vec<&Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    all.extend(spec["initContainers"].as_array().into_iter().flatten());
    assert!(!all.is_empty(), "{} has no containers", name(w));
    all
}

/// The main container (the one running agp).
fn agp_container(w: &Value) -> &Value {
    let cs = &pod_spec(w)["containers"];
    cs.as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "agp"))
        .unwrap_or_else(|| panic!("{}: no container named agp", name(w)))
}

fn env_entry<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name))
}

/// `matchLabels` (all of them) are among `labels`.
fn selects(match_labels: &Value, labels: &Value) -> bool {
    let m = match_labels
        .as_object()
        .unwrap_or_else(|| panic!("selector is not a map: {match_labels}"));
    !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn template_labels(w: &Value) -> &Value {
    &w["spec"]["template"]["metadata"]["labels"]
}

fn mount_path<'a>(container: &'a Value, volume: &str) -> Option<&'a str> {
    container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
}

/// Seconds a preStop `sleep N` hook takes (0 without one).
fn pre_stop_secs(container: &Value) -> i64 {
    let cmd = &container["lifecycle"]["preStop"]["exec"]["command"];
    match cmd.as_array().map(|a| {
        a.iter()
            .map(|x| x.as_str().unwrap_or(""))
            .collect::<Vec<_>>()
    }) {
        Some(args) if args.first() == Some(&"sleep") => args[1].parse().expect("sleep N"),
        Some(args) => panic!("unexpected preStop command {args:?}"),
        None => container["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_i64()
            .unwrap_or(0),
    }
}

#[test]
fn every_manifest_parses_names_no_namespace_and_is_listed_in_the_kustomization() {
    let k = K8s::load();
    let mut files = BTreeSet::new();
    for (file, d) in &k.docs {
        for field in ["apiVersion", "kind"] {
            assert!(d[field].is_string(), "{file}: no {field}");
        }
        if d["kind"] == "Kustomization" {
            continue;
        }
        files.insert(file.clone());
        assert!(
            d["metadata"]["name"].is_string(),
            "{file}: no metadata.name"
        );
        assert!(
            d["metadata"].get("namespace").is_none(),
            "{file}: {} names a namespace; the manifests are namespace-agnostic",
            name(d)
        );
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/name"],
            IMAGE,
            "{file}: {} lacks the app.kubernetes.io/name label",
            name(d)
        );
    }
    // Only the extensionless name keeps `kubectl apply -f deploy/k8s/` from applying it.
    let kust_files: Vec<&String> = k
        .docs
        .iter()
        .filter(|(_, d)| d["kind"] == "Kustomization")
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        kust_files,
        ["Kustomization"],
        "the kustomization is deploy/k8s/Kustomization"
    );
    let kust: Vec<&Value> = k
        .docs
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == "Kustomization")
        .collect();
    assert_eq!(kust.len(), 1, "one Kustomization");
    let listed: BTreeSet<String> = kust[0]["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| s(r, "resource").to_string())
        .collect();
    assert_eq!(
        listed, files,
        "Kustomization must list exactly the manifests in deploy/k8s"
    );
    let kinds: BTreeSet<&str> = k.resources().map(|d| s(&d["kind"], "kind")).collect();
    for kind in [
        "StatefulSet",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Secret",
        "ConfigMap",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/k8s");
    }
}

#[test]
fn serve_statefulset_keeps_its_journal_on_a_claim_at_the_data_dir() {
    let k = K8s::load();
    let sts = k.get("StatefulSet", SERVE);
    let c = agp_container(sts);
    assert_eq!(c["args"], serde_json::json!(["serve"]));
    let data_dir = k
        .env(c, "AGP_DATA_DIR")
        .expect("AGP_DATA_DIR set for agp-serve");
    assert_eq!(data_dir, DATA_DIR, "AGP_DATA_DIR (the image's default)");
    let claims = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .expect("agp-serve has volumeClaimTemplates");
    let journal = claims
        .iter()
        .find(|t| mount_path(c, s(&t["metadata"]["name"], "claim name")) == Some(&data_dir))
        .unwrap_or_else(|| panic!("no volumeClaimTemplate is mounted at AGP_DATA_DIR {data_dir}"));
    assert_eq!(
        journal["spec"]["accessModes"],
        serde_json::json!(["ReadWriteOnce"])
    );
    assert!(journal["spec"]["resources"]["requests"]["storage"].is_string());
    // A scale-down (the HPA) must not delete a journal that may hold undrained rows.
    assert_eq!(
        sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
        "Retain"
    );
    // Serving pods run no jobs; the worker does.
    assert_eq!(k.env(c, "AGP_WORKERS").as_deref(), Some("0"));
}

#[test]
fn probes_ask_readyz_and_healthz_on_the_listening_port() {
    let k = K8s::load();
    let sts = k.get("StatefulSet", SERVE);
    let c = agp_container(sts);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    // /healthz never checks Postgres: a database outage must not restart the pods.
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let listen = k.env(c, "AGP_LISTEN").expect("AGP_LISTEN");
    let (host, port) = listen.rsplit_once(':').expect("HOST:PORT");
    assert_eq!(host, "0.0.0.0", "the pod must listen beyond loopback");
    let port: i64 = port.parse().unwrap();
    let ports = c["ports"].as_array().expect("container ports");
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let p = &c[probe]["httpGet"]["port"];
        if p.is_null() {
            continue;
        }
        let resolved = match p {
            Value::String(n) => ports
                .iter()
                .find(|cp| cp["name"] == *n)
                .unwrap_or_else(|| panic!("{probe}: no container port named {n}"))["containerPort"]
                .as_i64(),
            v => v.as_i64(),
        };
        assert_eq!(
            resolved,
            Some(port),
            "{probe} must probe AGP_LISTEN's port {port}"
        );
    }
}

#[test]
fn grace_periods_cover_the_journal_drain() {
    let k = K8s::load();
    let workloads = k.workloads();
    assert!(workloads.len() >= 2);
    for w in workloads {
        let grace = pod_spec(w)["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or_else(|| panic!("{}: set terminationGracePeriodSeconds", name(w)));
        let pre_stop = containers(w)
            .iter()
            .map(|c| pre_stop_secs(c))
            .max()
            .unwrap_or(0);
        assert!(
            grace > JOURNAL_DRAIN_SECS + pre_stop,
            "{}: grace period {grace} s must exceed the preStop pause ({pre_stop} s) plus the \
             journal drain ({JOURNAL_DRAIN_SECS} s)",
            name(w)
        );
    }
}

#[test]
fn every_container_requests_resources_and_has_a_memory_limit() {
    let k = K8s::load();
    for w in k.workloads() {
        for c in containers(w) {
            let r = &c["resources"];
            for what in ["cpu", "memory"] {
                assert!(
                    r["requests"][what].is_string() || r["requests"][what].is_number(),
                    "{}/{}: resources.requests.{what} missing",
                    name(w),
                    c["name"]
                );
            }
            assert!(
                r["limits"]["memory"].is_string(),
                "{}: limits.memory missing",
                name(w)
            );
        }
    }
}

#[test]
fn pods_run_as_the_images_non_root_user() {
    let k = K8s::load();
    for w in k.workloads() {
        let sc = &pod_spec(w)["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{}: runAsNonRoot", name(w));
        assert_eq!(sc["runAsUser"], UID, "{}: runAsUser", name(w));
        assert_eq!(sc["runAsGroup"], UID, "{}: runAsGroup", name(w));
        // Makes the journal's volume writable for the agp group.
        assert_eq!(sc["fsGroup"], UID, "{}: fsGroup", name(w));
        for c in containers(w) {
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        }
    }
    let dockerfile = read(&root().join("docker/Dockerfile"));
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == format!("USER {UID}:{UID}")),
        "docker/Dockerfile must run as USER {UID}:{UID}, the uid the manifests use"
    );
}

#[test]
fn the_disruption_budget_covers_the_serving_pods_only() {
    let k = K8s::load();
    let pdbs = k.of_kind("PodDisruptionBudget");
    assert_eq!(pdbs.len(), 1);
    let pdb = pdbs[0];
    assert_eq!(pdb["apiVersion"], "policy/v1");
    let sel = &pdb["spec"]["selector"]["matchLabels"];
    let sts = k.get("StatefulSet", SERVE);
    assert!(
        selects(sel, template_labels(sts)),
        "the PDB must select the agp-serve pods"
    );
    let worker = k.get("Deployment", WORKER);
    assert!(
        !selects(sel, template_labels(worker)),
        "the PDB must not select the worker"
    );
    let min_available = pdb["spec"]["minAvailable"]
        .as_i64()
        .expect("minAvailable as a number");
    let hpa_min = k.get("HorizontalPodAutoscaler", SERVE)["spec"]["minReplicas"]
        .as_i64()
        .unwrap();
    assert!(
        min_available < hpa_min && min_available >= 1,
        "minAvailable {min_available} must let a drain evict one of the {hpa_min} replicas"
    );
}

#[test]
fn the_autoscaler_targets_the_serving_statefulset_on_cpu() {
    let k = K8s::load();
    let hpa = k.get("HorizontalPodAutoscaler", SERVE);
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["apiVersion"], "apps/v1");
    assert_eq!(target["kind"], "StatefulSet");
    let sts = k.get("StatefulSet", SERVE);
    assert_eq!(
        target["name"], sts["metadata"]["name"],
        "HPA target = the StatefulSet's name"
    );
    let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
    assert!(
        metrics
            .iter()
            .any(|m| m["type"] == "Resource" && m["resource"]["name"] == "cpu"),
        "a CPU metric"
    );
    let (min, max) = (
        hpa["spec"]["minReplicas"].as_i64().unwrap(),
        hpa["spec"]["maxReplicas"].as_i64().unwrap(),
    );
    assert!(min >= 2 && max > min, "replicas {min}..{max}");
    // HPA-managed pods need CPU requests, or utilization cannot be computed.
    assert!(agp_container(sts)["resources"]["requests"]["cpu"].is_string());
}

#[test]
fn the_master_key_and_database_url_come_from_the_secret() {
    let k = K8s::load();
    let secrets = k.of_kind("Secret");
    assert_eq!(secrets.len(), 1);
    let secret = secrets[0];
    let keys = |sec: &Value| -> BTreeSet<String> {
        ["stringData", "data"]
            .iter()
            .flat_map(|f| {
                sec[*f]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k.clone())
            })
            .collect()
    };
    for (key, v) in secret["stringData"].as_object().expect("stringData").iter() {
        assert!(
            s(v, key).contains("REPLACE-ME"),
            "secret.yaml is a template: {key} must hold a placeholder, not a real value"
        );
    }
    for cm in k.of_kind("ConfigMap") {
        for key in ["AGP_MASTER_KEY", "DATABASE_URL", "AGP_LLM_API_KEY"] {
            assert!(
                cm["data"].get(key).is_none(),
                "{key} must not be in a ConfigMap"
            );
        }
    }
    let serve = agp_container(k.get("StatefulSet", SERVE));
    assert!(
        env_entry(serve, "AGP_MASTER_KEY").is_some(),
        "agp-serve needs AGP_MASTER_KEY"
    );
    for w in k.workloads() {
        let c = agp_container(w);
        assert!(
            env_entry(c, "DATABASE_URL").is_some(),
            "{}: DATABASE_URL",
            name(w)
        );
        for var in ["AGP_MASTER_KEY", "DATABASE_URL"] {
            let Some(e) = env_entry(c, var) else { continue };
            assert!(
                e.get("value").is_none(),
                "{}: {var} as a plain value",
                name(w)
            );
            let r = &e["valueFrom"]["secretKeyRef"];
            assert_eq!(
                r["name"],
                secret["metadata"]["name"],
                "{}: {var} from the Secret",
                name(w)
            );
            assert!(
                keys(secret).contains(s(&r["key"], "key")),
                "{}: {var}: no such key",
                name(w)
            );
        }
    }
}

#[test]
fn labels_selectors_and_services_agree() {
    let k = K8s::load();
    let sts = k.get("StatefulSet", SERVE);
    let worker = k.get("Deployment", WORKER);
    for w in k.workloads() {
        assert!(
            selects(&w["spec"]["selector"]["matchLabels"], template_labels(w)),
            "{}: its selector must match its own pod template",
            name(w)
        );
    }
    assert!(
        !selects(
            &sts["spec"]["selector"]["matchLabels"],
            template_labels(worker)
        ),
        "the serve selector must not match the worker's pods"
    );
    let services = k.of_kind("Service");
    assert_eq!(services.len(), 2, "a headless Service and a normal one");
    let c = agp_container(sts);
    for svc in &services {
        let sel = &svc["spec"]["selector"];
        assert!(
            selects(sel, template_labels(sts)),
            "{} selects the serve pods",
            name(svc)
        );
        assert!(
            !selects(sel, template_labels(worker)),
            "{} must not select the worker",
            name(svc)
        );
        for p in svc["spec"]["ports"].as_array().expect("ports") {
            let tp = s(&p["targetPort"], "targetPort");
            assert!(
                c["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|cp| cp["name"] == tp),
                "{}: targetPort {tp} is not a named container port",
                name(svc)
            );
        }
    }
    let governing = s(&sts["spec"]["serviceName"], "serviceName");
    let headless = k.get("Service", governing);
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "{governing} must be headless"
    );
    let normal = services
        .iter()
        .filter(|s| s["spec"]["clusterIP"] != "None")
        .count();
    assert_eq!(normal, 1, "one load-balanced Service");
}

#[test]
fn every_container_runs_the_project_image() {
    let k = K8s::load();
    for w in k.workloads() {
        for c in containers(w) {
            let image = s(&c["image"], "image");
            let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
            assert_eq!(
                repo.rsplit('/').next(),
                Some(IMAGE),
                "{}: image {image} is not {IMAGE}",
                name(w)
            );
        }
    }
    let kust = k
        .docs
        .iter()
        .find(|(_, d)| d["kind"] == "Kustomization")
        .unwrap();
    let images = kust.1["images"].as_array().expect("kustomization images");
    assert!(
        images.iter().any(|i| i["name"] == IMAGE),
        "kustomization images: {IMAGE}"
    );
}

#[test]
fn the_worker_runs_jobs_with_its_journal_on_an_empty_dir() {
    let k = K8s::load();
    let worker = k.get("Deployment", WORKER);
    let c = agp_container(worker);
    assert_eq!(c["args"], serde_json::json!(["worker"]));
    let data_dir = k
        .env(c, "AGP_DATA_DIR")
        .expect("AGP_DATA_DIR for the worker");
    let vol = pod_spec(worker)["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| mount_path(c, s(&v["name"], "volume name")) == Some(data_dir.as_str()))
        .unwrap_or_else(|| panic!("the worker mounts nothing at AGP_DATA_DIR {data_dir}"));
    assert!(
        vol["emptyDir"].is_object(),
        "the worker's journal is on an emptyDir"
    );
    assert!(
        env_entry(c, "AGP_MASTER_KEY").is_none(),
        "the worker serves no API"
    );
    assert_ne!(
        k.env(c, "AGP_WORKERS").as_deref(),
        Some("0"),
        "the worker must run jobs"
    );
}

// ---------------------------------------------------------------------------------------------
// docker/: the image and the compose files.

/// `${VAR:-default}` -> default, `${VAR:?message}` / `${VAR}` -> "set" (what compose would
/// substitute with nothing exported but the required variables).
fn interpolate_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').expect("unclosed ${") + i;
        let inner = &rest[i + 2..end];
        if let Some((_, d)) = inner.split_once(":-") {
            out.push_str(d);
        } else {
            out.push_str("set");
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn compose(files: &[&str]) -> Value {
    let mut merged = Value::Null;
    for f in files {
        let path = root().join("docker").join(f);
        let mut docs = yaml_docs_str(
            &interpolate_defaults(&read(&path)),
            &path.display().to_string(),
        );
        assert_eq!(docs.len(), 1, "{f}: one document");
        merge(&mut merged, docs.remove(0));
    }
    merged
}

/// Compose's merge for what these files use: maps merge, scalars and lists are replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

fn duration_secs(v: &Value) -> i64 {
    let t = s(v, "duration");
    if let Some(m) = t.strip_suffix('m') {
        m.parse::<i64>().unwrap() * 60
    } else {
        t.trim_end_matches('s').parse().unwrap()
    }
}

fn agp_services(c: &Value) -> Vec<(&String, &Value)> {
    c["services"]
        .as_object()
        .expect("services")
        .iter()
        .filter(|(_, svc)| svc["image"] == IMAGE)
        .collect()
}

#[test]
fn compose_gives_every_agp_container_its_own_journal_volume_and_time_to_drain() {
    let c = compose(&["compose.yaml"]);
    let services = c["services"].as_object().expect("services");
    assert_eq!(services["postgres"]["image"], "postgres:15");
    for key in ["POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"] {
        assert!(
            services["postgres"]["environment"][key].is_string(),
            "postgres {key}"
        );
    }
    assert!(s(&services["postgres"]["healthcheck"]["test"][1], "test").contains("pg_isready"));
    let agp = agp_services(&c);
    let commands: Vec<&Value> = agp.iter().map(|(_, svc)| &svc["command"][0]).collect();
    assert_eq!(
        commands.iter().filter(|c| **c == "serve").count(),
        2,
        "two serve replicas"
    );
    assert_eq!(
        commands.iter().filter(|c| **c == "worker").count(),
        1,
        "one worker"
    );
    let mut volumes = BTreeSet::new();
    for (n, svc) in &agp {
        assert!(
            svc.get("ports").is_none(),
            "{n}: no ports in compose.yaml (host-network merge)"
        );
        let mounts: Vec<&str> = svc["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .map(|v| s(v, "volume"))
            .collect();
        let journal = mounts
            .iter()
            .find_map(|m| m.strip_suffix(&format!(":{DATA_DIR}")))
            .unwrap_or_else(|| panic!("{n}: no named volume at {DATA_DIR}"));
        assert!(
            c["volumes"].get(journal).is_some(),
            "{n}: volume {journal} not declared"
        );
        assert!(
            volumes.insert(journal.to_string()),
            "{n}: volume {journal} shared with another service"
        );
        assert!(
            duration_secs(&svc["stop_grace_period"]) > JOURNAL_DRAIN_SECS,
            "{n}: stop_grace_period"
        );
        assert_eq!(svc["restart"], "unless-stopped", "{n}: restart policy");
        assert_eq!(
            svc["depends_on"]["postgres"]["condition"], "service_healthy",
            "{n}"
        );
        if svc["command"][0] == "serve" {
            assert_eq!(
                svc["environment"]["AGP_MASTER_KEY"], "set",
                "{n}: AGP_MASTER_KEY from the environment"
            );
        }
    }
}

#[test]
fn the_host_network_override_puts_everything_on_distinct_loopback_ports() {
    let c = compose(&["compose.yaml", "compose.hostnet.yaml"]);
    let services = c["services"].as_object().expect("services");
    for (n, svc) in services {
        assert_eq!(svc["network_mode"], "host", "{n}: network_mode host");
        assert!(
            svc.get("ports").is_none(),
            "{n}: published ports are an error in host mode"
        );
    }
    let pg = &services["postgres"];
    let pg_port = s(&pg["environment"]["PGPORT"], "PGPORT").to_string();
    let cmd: Vec<&str> = pg["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| s(v, "arg"))
        .collect();
    assert!(
        cmd.contains(&"listen_addresses=127.0.0.1"),
        "postgres listens on loopback only"
    );
    let mut ports = BTreeSet::from([pg_port.clone()]);
    for (n, svc) in agp_services(&c) {
        let env = &svc["environment"];
        let url = s(&env["DATABASE_URL"], "DATABASE_URL");
        assert!(
            url.contains(&format!("@127.0.0.1:{pg_port}/")),
            "{n}: DATABASE_URL {url}"
        );
        if svc["command"][0] == "serve" {
            let listen = s(&env["AGP_LISTEN"], "AGP_LISTEN");
            let port = listen
                .strip_prefix("127.0.0.1:")
                .unwrap_or_else(|| panic!("{n}: {listen}"));
            assert!(
                ports.insert(port.to_string()),
                "{n}: port {port} used twice"
            );
        }
    }
    assert_eq!(ports.len(), 3, "Postgres and two replicas");
    // The ordinary-networking override publishes on loopback only.
    let o = compose(&["compose.override.yaml"]);
    for (n, svc) in o["services"].as_object().unwrap() {
        for p in svc["ports"].as_array().unwrap() {
            assert!(s(p, "port").starts_with("127.0.0.1:"), "{n}: {p}");
        }
    }
}

/// Paths the crate reads at compile time (`include_str!`, `include_bytes!`, `migrate!`),
/// relative to the repository root.
fn embedded_paths() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("src"), &mut files);
    let mut paths = BTreeSet::new();
    for f in files {
        let text = read(&f);
        for mac in ["include_str!(\"", "include_bytes!(\"", "sqlx::migrate!(\""] {
            for (i, _) in text.match_indices(mac) {
                let start = i + mac.len();
                let rel = &text[start..start + text[start..].find('"').unwrap()];
                let abs = if mac.starts_with("sqlx") {
                    root().join(rel)
                } else {
                    f.parent().unwrap().join(rel)
                };
                let abs = abs
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("{}: {rel}: {e}", f.display()));
                let rel = abs.strip_prefix(root().canonicalize().unwrap()).unwrap();
                paths.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    paths
}

#[test]
fn the_image_copies_what_the_crate_embeds_and_runs_as_documented() {
    let dockerfile = read(&root().join("docker/Dockerfile"));
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();
    let froms: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert_eq!(
        froms,
        [
            "FROM rust:1.95-bookworm AS build",
            "FROM debian:bookworm-slim"
        ]
    );
    let copied: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1].to_vec()
        })
        .map(|p| p.trim_start_matches("./").trim_end_matches('/'))
        .collect();
    let ignored: Vec<String> = read(&root().join(".dockerignore"))
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let embedded = embedded_paths();
    assert!(
        embedded.iter().any(|p| p.starts_with("data/")),
        "the console sample is embedded: {embedded:?}"
    );
    for p in &embedded {
        assert!(
            copied
                .iter()
                .any(|c| p == c || p.starts_with(&format!("{c}/"))),
            "the crate embeds {p} but docker/Dockerfile does not COPY it (copies: {copied:?})"
        );
        assert!(
            !ignored
                .iter()
                .any(|i| p == i || p.starts_with(&format!("{i}/"))),
            ".dockerignore excludes {p}, which the crate embeds"
        );
    }
    let has = |needle: &str| dockerfile.contains(needle);
    assert!(
        has(&format!("AGP_DATA_DIR={DATA_DIR}")),
        "ENV AGP_DATA_DIR={DATA_DIR}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("VOLUME") && l.contains(&format!("\"{DATA_DIR}\""))),
        "VOLUME {DATA_DIR}"
    );
    let health = dockerfile
        .split("HEALTHCHECK")
        .nth(1)
        .expect("a HEALTHCHECK")
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        .take(3)
        .collect::<String>();
    assert!(
        health.contains("agp probe") && health.contains("/readyz"),
        "HEALTHCHECK: {health}"
    );
    assert!(lines.contains(&"STOPSIGNAL SIGTERM"));
    assert!(lines.contains(&"ENTRYPOINT [\"agp\"]"));
    assert!(lines.contains(&"CMD [\"serve\"]"));
    // The journal directory exists and belongs to the runtime user before VOLUME, so new named
    // volumes are created with that owner.
    let chown = dockerfile
        .find("chown -R agp:agp /var/lib/agp")
        .expect("chown of the data dir");
    let volume = dockerfile.find("\nVOLUME ").expect("a VOLUME instruction");
    assert!(chown < volume, "chown before VOLUME");
}
