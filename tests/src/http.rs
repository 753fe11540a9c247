//! GET requests to a drc process's HTTP listener with curl, as a scraper or
//! a probe would make them: over TLS with the lab's CA, with or without a
//! client certificate.

use std::process::Command;

use drc_tls::TlsFiles;

/// Who asks.
pub enum Asker<'a> {
    /// Plain HTTP (a lab with `insecure`).
    Plain,
    /// TLS, trusting `ca`, without a client certificate (a kubelet probe).
    Anonymous { ca: &'a std::path::Path },
    /// TLS with a client certificate.
    As(&'a TlsFiles),
}

/// GETs `path` from `endpoint` (host:port): the status code and the body.
pub fn get(endpoint: &str, path: &str, asker: &Asker) -> anyhow::Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
    let scheme = match asker {
        Asker::Plain => "http",
        Asker::Anonymous { ca } => {
            cmd.arg("--cacert").arg(ca);
            "https"
        }
        Asker::As(t) => {
            cmd.arg("--cacert").arg(&t.ca).arg("--cert").arg(&t.cert).arg("--key").arg(&t.key);
            "https"
        }
    };
    cmd.arg(format!("{scheme}://{endpoint}{path}"));
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "curl {endpoint}{path}: {}", String::from_utf8_lossy(&out.stderr).trim());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').ok_or_else(|| anyhow::anyhow!("curl printed no status"))?;
    Ok((code.trim().parse()?, body.to_string()))
}

/// The value of the series `name{labels}` in a Prometheus text exposition:
/// `labels` are `k="v"` pairs that must all appear among its labels.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let all = labels.iter().all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        (n == name && all).then(|| value.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn a_series_is_found_by_its_name_and_some_of_its_labels() {
        let text = "# TYPE drc_x gauge\ndrc_x{cluster=\"pg\",member=\"a\"} 1.0\ndrc_x{cluster=\"pg\",member=\"b\"} 0.0\ndrc_y_total 7\n";
        assert_eq!(sample(text, "drc_x", &[("member", "b")]), Some(0.0));
        assert_eq!(sample(text, "drc_y_total", &[]), Some(7.0));
        assert_eq!(sample(text, "drc_x", &[("member", "c")]), None);
    }
}
