use super::*;

fn spec(yaml: &str) -> JobSpec {
    serde_yaml::from_str(yaml).unwrap()
}

/// A Slurm job of team-a that a permissive policy accepts.
fn slurm_job(extra: &str) -> JobSpec {
    spec(&format!(
        "input: {{uri: \"s3://data/team-a/in.jsonl\"}}\n\
         handler: {{builtin: {{name: identity}}}}\n\
         executor: {{slurm: {{}}}}\n{extra}"
    ))
}

fn policy(yaml: &str) -> PolicySpec {
    serde_yaml::from_str(yaml).unwrap()
}

fn team_a() -> PolicySpec {
    policy(
        "namespaces: [team-a]\n\
         slurm: {user: alice, partitions: [cpu, gpu], accounts: [proj-a], extraOptions: [--exclusive, --nice]}\n\
         kubernetes: {images: [\"registry.example/team-a/*\", \"python:3.12@sha256:abc\"], \
         serviceAccounts: [worker], secrets: [api-key], nodeSelector: {pool: [batch]}}\n\
         limits: {maxTasks: 100, maxInputBytes: 1Gi, maxConcurrentJobs: 2}",
    )
}

fn defaults() -> OperatorDefaults {
    OperatorDefaults {
        storage_uri: Some("s3://data/orch/".into()),
        slurm_url: Some("https://slurm.example:6820".into()),
        slurm_token_file: Some("/var/run/orch/jwt".into()),
    }
}

fn denied(spec: &JobSpec, policy: &PolicySpec) -> Vec<String> {
    govern(spec, "team-a", "p", policy, &defaults())
        .unwrap_err()
        .into_iter()
        .map(|e| {
            assert!(e.message.starts_with("refused by OrchPolicy `p`: "), "{e}");
            e.path
        })
        .collect()
}

#[test]
fn an_allowed_job_gets_the_admins_choices() {
    let governed = govern(&slurm_job(""), "team-a", "p", &team_a(), &defaults()).unwrap();
    let slurm = governed.spec.executor.slurm.as_ref().unwrap();
    assert_eq!(slurm.transport, Some(SlurmTransport::Rest));
    assert_eq!(slurm.url.as_deref(), Some("https://slurm.example:6820"));
    assert_eq!(slurm.user.as_deref(), Some("alice"));
    assert_eq!(slurm.token_file.as_deref(), Some("/var/run/orch/jwt"));
    assert_eq!(governed.slurm_token, None);
    // Storage of its own under the operator's; the first partition and account listed.
    assert_eq!(
        governed.spec.storage.uri.as_deref(),
        Some("s3://data/orch/team-a/")
    );
    assert_eq!(governed.spec.resources.partition.as_deref(), Some("cpu"));
    assert_eq!(governed.spec.resources.account.as_deref(), Some("proj-a"));
    assert_eq!(governed.spec.resources.qos, None);
    assert_eq!(
        governed.limits,
        JobLimits {
            max_tasks: Some(100),
            max_input_bytes: Some(1 << 30),
            max_decompressed_bytes: None,
            max_concurrent_jobs: Some(2),
        }
    );
}

#[test]
fn a_token_secret_replaces_the_operators_token_file() {
    let mut p = team_a();
    p.slurm.as_mut().unwrap().token_secret = Some(SecretKeyRef {
        name: "slurm-team-a".into(),
        key: "jwt".into(),
    });
    p.slurm.as_mut().unwrap().url = Some("https://other:6820".into());
    let governed = govern(&slurm_job(""), "team-a", "p", &p, &defaults()).unwrap();
    let slurm = governed.spec.executor.slurm.as_ref().unwrap();
    assert_eq!(slurm.token_file, None);
    assert_eq!(slurm.url.as_deref(), Some("https://other:6820"));
    assert_eq!(
        governed.slurm_token,
        Some(SlurmToken::Secret(SecretKeyRef {
            name: "slurm-team-a".into(),
            key: "jwt".into()
        }))
    );
}

#[test]
fn a_spec_never_chooses_endpoint_token_user_or_local_paths() {
    let job = slurm_job("storage: {uri: s3://data/elsewhere/}\n");
    let mut job = job;
    let slurm = job.executor.slurm.as_mut().unwrap();
    slurm.url = Some("https://attacker.example".into());
    slurm.token_file = Some("/var/run/secrets/kubernetes.io/serviceaccount/token".into());
    slurm.user = Some("root".into());
    slurm.worker = Some("/tmp/evil".into());
    slurm.log_dir = Some("/etc".into());
    assert_eq!(
        denied(&job, &team_a()),
        [
            "spec.storage.uri",
            "spec.executor.slurm.url",
            "spec.executor.slurm.tokenFile",
            "spec.executor.slurm.user",
            "spec.executor.slurm.worker",
            "spec.executor.slurm.logDir",
        ]
    );
}

#[test]
fn local_workers_and_unlisted_executors_are_refused() {
    let local =
        spec("input: {uri: \"s3://data/team-a/in.jsonl\"}\nhandler: {builtin: {name: identity}}\n");
    assert!(local.executor.local.is_some(), "local is the default");
    assert_eq!(denied(&local, &team_a()), ["spec.executor.local"]);
    let only_slurm = policy("namespaces: [team-a]\nslurm: {user: alice}");
    let pods = spec(
        "input: {uri: \"s3://data/team-a/in.jsonl\"}\nhandler: {builtin: {name: identity}}\n\
         executor: {kubernetes: {}}\n",
    );
    assert_eq!(denied(&pods, &only_slurm), ["spec.executor.kubernetes"]);
    let only_pods = policy("namespaces: [team-a]\nkubernetes: {}");
    assert_eq!(denied(&slurm_job(""), &only_pods), ["spec.executor.slurm"]);
}

#[test]
fn data_is_s3_under_the_namespaces_prefix() {
    for (input, ok) in [
        ("s3://data/team-a/in.jsonl", true),
        ("s3://data/team-a/sub/*.jsonl", true),
        ("s3://shared/datasets/x.jsonl", true),
        ("s3://data/team-ab/in.jsonl", false),
        ("s3://data/team-b/in.jsonl", false),
        ("s3://data/team-a/../team-b/in.jsonl", false),
        ("s3://other/team-a/in.jsonl", false),
        (
            "file:///var/run/secrets/kubernetes.io/serviceaccount/token",
            false,
        ),
        ("/dev/zero", false),
    ] {
        let mut p = team_a();
        p.storage.read_prefixes = vec!["s3://shared/datasets".into()];
        let mut job = slurm_job("");
        job.input.uri = input.into();
        let result = govern(&job, "team-a", "p", &p, &defaults());
        assert_eq!(result.is_ok(), ok, "{input}: {result:?}");
        if !ok {
            assert_eq!(denied(&job, &p), ["spec.input.uri"], "{input}");
        }
    }
    // Read prefixes are never written.
    let mut p = team_a();
    p.storage.read_prefixes = vec!["s3://shared/datasets/".into()];
    let job = slurm_job("output: {uri: \"s3://shared/datasets/out/\"}\n");
    assert_eq!(denied(&job, &p), ["spec.output.uri"]);
    let job = slurm_job("output: {uri: \"s3://data/team-a/out/\"}\n");
    assert!(govern(&job, "team-a", "p", &p, &defaults()).is_ok());
    // The policy's own prefix replaces the default.
    p.storage.data_prefix = Some("s3://team-a-bucket/".into());
    assert_eq!(denied(&slurm_job(""), &p), ["spec.input.uri"]);
}

#[test]
fn slurm_choices_are_those_listed() {
    let job = slurm_job("resources: {partition: debug, account: proj-b, qos: high}\n");
    let mut job = job;
    job.executor.slurm.as_mut().unwrap().extra_options = vec![
        "--exclusive".into(),
        "--nice=10".into(),
        "--reservation=all-nodes".into(),
        "--nodelist=n1".into(),
    ];
    assert_eq!(
        denied(&job, &team_a()),
        [
            "spec.executor.slurm.extraOptions",
            "spec.executor.slurm.extraOptions",
            "spec.resources.partition",
            "spec.resources.account",
            "spec.resources.qos",
        ]
    );
    let errors = govern(&job, "team-a", "p", &team_a(), &defaults()).unwrap_err();
    assert!(
        errors[0].message.contains("--reservation=all-nodes"),
        "{}",
        errors[0]
    );
    assert!(errors[2].message.contains("cpu, gpu"), "{}", errors[2]);
}

#[test]
fn the_transport_is_the_policys() {
    let job = slurm_job("");
    let mut job = job;
    job.executor.slurm.as_mut().unwrap().transport = Some(SlurmTransport::Cli);
    assert_eq!(denied(&job, &team_a()), ["spec.executor.slurm.transport"]);
    let cli = policy("namespaces: [team-a]\nslurm: {transport: cli}");
    let governed = govern(&job, "team-a", "p", &cli, &defaults()).unwrap();
    let slurm = governed.spec.executor.slurm.unwrap();
    assert_eq!(slurm.transport, Some(SlurmTransport::Cli));
    assert_eq!(
        (slurm.url, slurm.user, slurm.token_file),
        (None, None, None)
    );
}

#[test]
fn rest_without_a_user_or_a_url_is_refused_never_root() {
    let no_user = policy("namespaces: [team-a]\nslurm: {}");
    assert_eq!(
        denied(&slurm_job(""), &no_user),
        ["spec.executor.slurm.user"]
    );
    let no_url = OperatorDefaults {
        slurm_url: None,
        ..defaults()
    };
    let errors = govern(&slurm_job(""), "team-a", "p", &team_a(), &no_url).unwrap_err();
    assert_eq!(errors[0].path, "spec.executor.slurm.url");
}

#[test]
fn pods_get_only_listed_images_accounts_secrets_and_nodes() {
    let base =
        "input: {uri: \"s3://data/team-a/in.jsonl\"}\nhandler: {builtin: {name: identity}}\n";
    let ok = spec(&format!(
        "{base}executor: {{kubernetes: {{image: registry.example/team-a/worker:1, \
         serviceAccountName: worker, envFromSecrets: [api-key], nodeSelector: {{pool: batch}}}}}}\n"
    ));
    assert!(govern(&ok, "team-a", "p", &team_a(), &defaults()).is_ok());
    let pinned = spec(&format!(
        "{base}executor: {{kubernetes: {{image: \"python:3.12@sha256:abc\"}}}}\n"
    ));
    assert!(govern(&pinned, "team-a", "p", &team_a(), &defaults()).is_ok());
    let bad = spec(&format!(
        "{base}executor: {{kubernetes: {{image: registry.example/team-b/worker:1, \
         serviceAccountName: orch-operator, envFromSecrets: [api-key, aws-admin], \
         nodeSelector: {{pool: control-plane}}}}}}\n"
    ));
    assert_eq!(
        denied(&bad, &team_a()),
        [
            "spec.executor.kubernetes.image",
            "spec.executor.kubernetes.serviceAccountName",
            "spec.executor.kubernetes.envFromSecrets",
            "spec.executor.kubernetes.nodeSelector",
        ]
    );
    // A header's Secret must be listed too.
    let header = spec(
        "input: {uri: \"s3://data/team-a/in.jsonl\"}\n\
         handler: {builtin: {name: http, http: {url: \"https://api.example/x\", \
         headers: {Authorization: {secretRef: {name: other-team, key: token}}}}}}\n\
         executor: {kubernetes: {}}\n",
    );
    assert_eq!(denied(&header, &team_a()), ["spec.handler"]);
}

#[test]
fn exactly_one_policy_governs_a_namespace() {
    let a = team_a();
    let b = policy("namespaces: [team-b, team-a]");
    let c = policy("namespaces: [team-c]");
    let (name, _) = select([("a", &a), ("c", &c)], "team-a").unwrap();
    assert_eq!(name, "a");
    let none = select([("a", &a), ("c", &c)], "team-x").unwrap_err();
    assert!(
        none.message
            .contains("no OrchPolicy governs namespace `team-x`")
    );
    let both = select([("a", &a), ("b", &b)], "team-a").unwrap_err();
    assert!(both.message.contains("`a`, `b`"), "{both}");
}

#[test]
fn a_policy_is_a_strict_document() {
    let e =
        serde_yaml::from_str::<PolicySpec>("namespaces: [a]\nslurm: {partition: cpu}").unwrap_err();
    assert!(e.to_string().contains("partition"), "{e}");
}

#[test]
fn alert_secrets_come_only_from_listed_secrets() {
    let ok = slurm_job(
        "alerts: {channels: [{slack: {url: {secretKeyRef: {name: api-key, key: slack}}}}]}\n",
    );
    assert!(govern(&ok, "team-a", "p", &team_a(), &defaults()).is_ok());
    let bad = slurm_job(
        "alerts: {channels: [\
         {webhook: {url: {env: AWS_SECRET_ACCESS_KEY}}},\
         {slack: {url: {file: /var/run/secrets/kubernetes.io/serviceaccount/token}}},\
         {email: {from: a@b.c, to: [d@e.f], smtp: {host: smtp.evil, username: u, \
                  password: {secretKeyRef: {name: db-admin, key: password}}}}}]}\n",
    );
    assert_eq!(
        denied(&bad, &team_a()),
        [
            "spec.alerts.channels[0].webhook.url",
            "spec.alerts.channels[1].slack.url",
            "spec.alerts.channels[2].email.smtp.password",
        ]
    );
}
