//! Prints the CRDs of orch's custom resources as multi-document YAML:
//! `cargo run -p orch-crd --bin crdgen | kubectl apply -f -`.
//! The checked-in copies under `crds/` are written by the `crd_golden` test.

fn main() -> std::process::ExitCode {
    match orch_crd::crds_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
