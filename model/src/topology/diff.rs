//! A human-readable diff between two topologies, used by `drctl apply
//! --dry-run` and recorded with every apply.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Topology;

/// One line per change, in key order: `+ members.pg-c {...}` for an added
/// entity, `- members.pg-c` for a removed one and
/// `~ clusters.pg.policy.detection_window: "3s" -> "2s"` for a changed field.
pub fn diff(old: &Topology, new: &Topology) -> Vec<String> {
    let old = to_sections(old);
    let new = to_sections(new);
    let mut lines = Vec::new();
    // The usual order first, then any other section, so that none is left out.
    const ORDER: [&str; 5] = ["regions", "destinations", "clusters", "members", "failover_groups"];
    let rest: std::collections::BTreeSet<&str> = old.keys().chain(new.keys()).map(String::as_str).filter(|k| !ORDER.contains(k)).collect();
    for section in ORDER.into_iter().chain(rest) {
        let empty = serde_json::Map::new();
        let o = old.get(section).unwrap_or(&empty);
        let n = new.get(section).unwrap_or(&empty);
        for (name, value) in o {
            match n.get(name) {
                None => lines.push(format!("- {section}.{name}")),
                Some(nv) if nv != value => {
                    let mut a = BTreeMap::new();
                    let mut b = BTreeMap::new();
                    flatten(value, String::new(), &mut a);
                    flatten(nv, String::new(), &mut b);
                    // A section of settings (`retention`) has plain values.
                    let key = |k: &str| if k.is_empty() { format!("{section}.{name}") } else { format!("{section}.{name}.{k}") };
                    for (k, av) in &a {
                        match b.get(k) {
                            Some(bv) if bv != av => lines.push(format!("~ {}: {av} -> {bv}", key(k))),
                            Some(_) => {}
                            None => lines.push(format!("- {}", key(k))),
                        }
                    }
                    for (k, bv) in &b {
                        if !a.contains_key(k) {
                            lines.push(format!("+ {} = {bv}", key(k)));
                        }
                    }
                }
                Some(_) => {}
            }
        }
        for (name, value) in n {
            if !o.contains_key(name) {
                lines.push(format!("+ {section}.{name} {value}"));
            }
        }
    }
    lines
}

fn to_sections(t: &Topology) -> BTreeMap<String, serde_json::Map<String, Value>> {
    let mut out = BTreeMap::new();
    if let Ok(Value::Object(top)) = serde_json::to_value(t) {
        for (k, v) in top {
            if let Value::Object(m) = v {
                out.insert(k, m);
            }
        }
    }
    out
}

fn flatten(v: &Value, prefix: String, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(v, key, out);
            }
        }
        leaf => {
            out.insert(prefix, leaf.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse_topology;
    use super::*;

    #[test]
    fn shows_added_removed_and_changed_entities() {
        let a = parse_topology("[regions.a]\n[regions.b]\n[clusters.c]\nkind='redis'\n").expect("valid");
        let b = parse_topology(
            "[regions.a]\npriority=7\n[regions.z]\n[clusters.c]\nkind='redis'\n[clusters.c.policy]\ndetection_window='9s'\n",
        )
        .expect("valid");
        let d = diff(&a, &b);
        assert_eq!(
            d,
            vec![
                "~ regions.a.priority: 100 -> 7".to_string(),
                "- regions.b".to_string(),
                "+ regions.z {\"priority\":100}".to_string(),
                "~ clusters.c.policy.detection_window: \"1s\" -> \"9s\"".to_string(),
            ]
        );
        assert!(diff(&b, &b).is_empty());
    }

    #[test]
    fn destination_changes_are_shown() {
        let base = "[regions.a]\n[regions.b]\n[clusters.c]\nkind='redis'\n";
        let a = parse_topology(&format!("{base}[destinations.s3-b]\nregion='b'\n")).expect("valid");
        let b = parse_topology(&format!("{base}[destinations.s3-a]\nregion='a'\n")).expect("valid");
        let d = diff(&a, &b);
        assert!(d.contains(&"- destinations.s3-b".to_string()), "{d:?}");
        assert!(d.iter().any(|l| l.starts_with("+ destinations.s3-a")), "{d:?}");
    }

    #[test]
    fn retention_changes_are_shown_as_settings() {
        let base = "[regions.a]\n[clusters.c]\nkind='redis'\n";
        let a = parse_topology(base).expect("valid");
        let b = parse_topology(&format!("{base}[retention]\naudit=50\n")).expect("valid");
        assert_eq!(diff(&a, &b), vec!["~ retention.audit: 10000 -> 50".to_string()]);
    }
}
