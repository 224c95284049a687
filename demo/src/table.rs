//! `kubectl get svc`-style output for the demo.

use std::collections::BTreeMap;
use std::fmt::Write;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

/// The first ingress address, as `kubectl get svc` shows under EXTERNAL-IP.
pub fn external_ip(svc: &Service) -> Option<String> {
    let ingress = svc
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?;
    ingress
        .iter()
        .find_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
}

fn ports(svc: &Service) -> String {
    let Some(spec) = svc.spec.as_ref() else {
        return String::new();
    };
    spec.ports
        .iter()
        .flatten()
        .map(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port {
                Some(np) => format!("{}:{np}/{proto}", p.port),
                None => format!("{}/{proto}", p.port),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S), one row per Service.
pub fn render(services: &[Service]) -> String {
    let rows: Vec<[String; 5]> = services
        .iter()
        .map(|s| {
            let spec = s.spec.as_ref();
            let type_ = spec
                .and_then(|s| s.type_.clone())
                .unwrap_or_else(|| "ClusterIP".into());
            let external = match external_ip(s) {
                Some(ip) => ip,
                None if type_ == "LoadBalancer" => "<pending>".into(),
                None => "<none>".into(),
            };
            [
                s.name_any(),
                type_,
                spec.and_then(|s| s.cluster_ip.clone())
                    .unwrap_or_else(|| "<none>".into()),
                external,
                ports(s),
            ]
        })
        .collect();
    let header = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}

/// `node-1 ######## 10  node-2 ...` for a traffic tally.
pub fn bars(counts: &BTreeMap<String, usize>, total: usize) -> String {
    counts
        .iter()
        .map(|(node, n)| {
            format!(
                "{node} {:<10} {n:>2}",
                "#".repeat((n * 10).div_ceil(total.max(1)))
            )
        })
        .collect::<Vec<_>>()
        .join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use kube::api::ObjectMeta;

    #[test]
    fn pending_until_an_address() {
        let s = Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                ports: Some(vec![ServicePort {
                    port: 80,
                    node_port: Some(30080),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        };
        let table = render(&[s]);
        assert!(table.contains("<pending>"), "{table}");
        assert!(table.contains("80:30080/TCP"), "{table}");
        assert!(table.starts_with("NAME"));
    }
}
