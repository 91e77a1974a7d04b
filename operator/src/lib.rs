//! orch's Kubernetes operator. So far: the custom resources (`OrchJob`, `TaskGroup`,
//! `RateLimit`) and their CRDs, generated from the Rust types, and the Kubernetes-free core of the
//! `OrchJob` controller (`status`); the controllers come next.

pub mod crd;
pub mod status;

/// All CRDs as one multi-document YAML stream (what `crdgen` prints and `crds/` holds).
pub fn crds_yaml() -> Result<String, Box<dyn std::error::Error>> {
    let mut out = String::new();
    for crd in crd::all_crds()? {
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// One CRD as a YAML document (starting with `---`), as checked in under `crds/`.
pub fn crd_yaml(crd: &crd::Crd) -> Result<String, serde_yaml::Error> {
    Ok(format!("---\n{}", serde_yaml::to_string(crd)?))
}
