//! The deployment files (Dockerfile, deploy/) are checked where a machine can
//! check them without a cluster or an AWS account: every file parses (YAML
//! with a YAML parser, JSON with serde_json); every argument the Kubernetes
//! Job, the AWS Batch job definition and the ECS task definition give
//! `dynbulk` is a flag the built binary's `run --help` lists, with a value
//! the binary accepts; the three engines run the same command with the same
//! number of processes; exit code 2 is never retried and nothing is
//! ignored; the metrics port agrees everywhere; the IAM policy allows
//! exactly the DynamoDB operations dynbulk's source calls.
//!
//! No endpoint is needed: this file runs with plain `cargo test --test deploy`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn json(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

/// Every document of a YAML file.
fn yaml(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The objects of every YAML file in deploy/kubernetes.
fn kubernetes_objects() -> Vec<(String, Value)> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {}", dir.display());
    files
        .into_iter()
        .flat_map(|name| {
            let rel = format!("deploy/kubernetes/{name}");
            yaml(&rel).into_iter().map(move |doc| (rel.clone(), doc))
        })
        .collect()
}

fn one_of_kind(objects: &[(String, Value)], kind: &str) -> Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == kind)
        .map(|(_, o)| o)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} in deploy/kubernetes");
    found[0].clone()
}

fn string_list(v: &Value, what: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not a list: {v}"))
        .iter()
        .map(|s| {
            // Kubernetes and ECS reject a number where a string is due: an
            // unquoted `2000` in YAML is a number.
            s.as_str()
                .unwrap_or_else(|| panic!("{what}: {s} is not a string"))
                .to_owned()
        })
        .collect()
}

/// The dynbulk container of the Job's pod template.
fn job_container(job: &Value) -> Value {
    let containers = job["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("the Job's pod has containers");
    assert_eq!(containers.len(), 1, "one container per pod: the process");
    containers[0].clone()
}

/// The arguments each engine gives the image's ENTRYPOINT (`dynbulk`).
fn commands() -> Vec<(&'static str, Vec<String>)> {
    let job = one_of_kind(&kubernetes_objects(), "Job");
    let container = job_container(&job);
    assert!(
        container.get("command").is_none(),
        "the Job must keep the image's ENTRYPOINT (dynbulk) and give only args"
    );
    let batch = json("deploy/aws-batch/job-definition.json");
    let ecs = json("deploy/ecs/task-definition.json");
    let ecs_container = &ecs["containerDefinitions"][0];
    assert!(
        ecs_container.get("entryPoint").is_none(),
        "the task must keep the image's ENTRYPOINT (dynbulk)"
    );
    vec![
        (
            "deploy/kubernetes (args)",
            string_list(&container["args"], "Job args"),
        ),
        (
            "deploy/aws-batch (containerProperties.command)",
            string_list(
                &batch["containerProperties"]["command"],
                "Batch containerProperties.command",
            ),
        ),
        (
            "deploy/ecs (containerDefinitions[0].command)",
            string_list(&ecs_container["command"], "ECS command"),
        ),
    ]
}

/// `run`'s flags as the binary lists them in `run --help`, each with whether
/// it takes a value (`--table <NAME>`).
fn run_flags() -> BTreeMap<String, bool> {
    parse_help(&run_help())
}

fn run_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dynbulk"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "dynbulk run --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// A flag's `[default: N]` in `run --help`.
fn help_default(help: &str, flag: &str) -> Option<String> {
    // A flag's own line starts at column 2 or 6 (see `parse_help`); a
    // description that mentions a flag, wrapped or not, is further in.
    let flag_line = |l: &str| {
        let t = l.trim_start();
        t.starts_with('-') && l.len() - t.len() <= 6
    };
    let mut lines = help.lines().skip_while(|l| {
        !(flag_line(l)
            && l.split_whitespace()
                .take(2)
                .any(|t| t.trim_end_matches(',') == flag))
    });
    lines.next()?;
    lines
        .take_while(|l| !flag_line(l))
        .find_map(|l| l.trim().strip_prefix("[default: "))
        .map(|d| d.trim_end_matches(']').to_owned())
}

/// Reads the flag lines of clap's help: `  -y, --yes`, `      --table <NAME>`,
/// `  -v, --verbose...`.
fn parse_help(help: &str) -> BTreeMap<String, bool> {
    let mut flags = BTreeMap::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        // Flags start at column 2 or 6; descriptions, which may begin with
        // a flag's name when wrapped, further in.
        if !trimmed.starts_with('-') || line.len() - trimmed.len() > 6 {
            continue;
        }
        let line = trimmed;
        let mut names = Vec::new();
        let mut takes_value = false;
        for token in line.split_whitespace() {
            let token = token.trim_end_matches(',').trim_end_matches("...");
            if token.starts_with('<') {
                takes_value = true;
            } else if is_flag(token) {
                names.push(token.to_owned());
            } else {
                break;
            }
        }
        for name in names {
            flags.insert(name, takes_value);
        }
    }
    flags
}

fn is_flag(token: &str) -> bool {
    let name = token.trim_start_matches('-');
    (token.starts_with("--") || token.len() == 2)
        && token.starts_with('-')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

/// Checks a command line against `run`'s flags: `run` first, then flags the
/// binary lists, each value-taking one followed by its value.
fn check_command(args: &[String], flags: &BTreeMap<String, bool>) -> Result<(), String> {
    let mut rest = args.iter();
    match rest.next() {
        Some(first) if first == "run" => {}
        other => return Err(format!("the command must start with `run`, not {other:?}")),
    }
    while let Some(arg) = rest.next() {
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, _)) if arg.starts_with("--") => (name, true),
            _ => (arg.as_str(), false),
        };
        if !is_flag(name) {
            return Err(format!(
                "{arg:?} is not a flag (`run` takes no positional argument)"
            ));
        }
        let Some(&takes_value) = flags.get(name) else {
            return Err(format!(
                "{name} is not a flag of `dynbulk run` (see `dynbulk run --help`)"
            ));
        };
        if takes_value && !inline_value && rest.next().is_none() {
            return Err(format!("{name} needs a value"));
        }
        if !takes_value && inline_value {
            return Err(format!("{name} takes no value"));
        }
    }
    Ok(())
}

fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .map(|i| args[i + 1].as_str())
        .or_else(|| {
            let prefix = format!("{flag}=");
            args.iter().find_map(|a| a.strip_prefix(&prefix))
        })
}

#[test]
fn every_argument_in_the_manifests_is_a_flag_the_binary_accepts() {
    let flags = run_flags();
    // The help is read right: a few flags every version has.
    for known in ["--table", "--rcu-limit", "--metrics-addr", "--yes", "-y"] {
        assert!(flags.contains_key(known), "{known} not found in run --help");
    }
    assert!(flags["--table"] && !flags["--yes"]);

    for (engine, args) in commands() {
        if let Err(e) = check_command(&args, &flags) {
            panic!("{engine}: {e}\ncommand: dynbulk {}", args.join(" "));
        }
        assert!(
            args.iter().any(|a| a == "--join"),
            "{engine}: every process must run with --join"
        );
        // The binary itself parses the command: values are checked as
        // they are parsed (a socket address, a number in range), before
        // --help stops it (so nothing is connected to).
        let out = Command::new(env!("CARGO_BIN_EXE_dynbulk"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{engine}: the binary rejects `dynbulk {}`:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_flag_check_rejects_what_the_binary_would() {
    let flags = parse_help(
        "Options:\n  -y, --yes\n          Do not ask\n      --table <NAME>\n          Target table, wrapped\n          --table and more\n          - text: lines\n",
    );
    let args = |list: &[&str]| -> Vec<String> { list.iter().map(|s| s.to_string()).collect() };
    assert_eq!(flags.len(), 3, "{flags:?}");
    assert!(check_command(&args(&["run", "--table", "orders", "-y"]), &flags).is_ok());
    assert!(check_command(&args(&["run", "--table=orders", "--yes"]), &flags).is_ok());
    let unknown = check_command(&args(&["run", "--no-such-flag"]), &flags).unwrap_err();
    assert!(unknown.contains("--no-such-flag"), "{unknown}");
    assert!(check_command(&args(&["run", "--table"]), &flags).is_err());
    assert!(check_command(&args(&["run", "orders"]), &flags).is_err());
    assert!(check_command(&args(&["status", "--yes"]), &flags).is_err());
    assert!(check_command(&args(&["run", "--yes=1"]), &flags).is_err());
}

#[test]
fn the_three_engines_run_the_same_command_and_the_same_number_of_processes() {
    let commands = commands();
    let (first_engine, first) = &commands[0];
    for (engine, args) in &commands[1..] {
        assert_eq!(
            args, first,
            "{engine} and {first_engine} run different commands"
        );
    }

    let job = one_of_kind(&kubernetes_objects(), "Job");
    let batch = json("deploy/aws-batch/job-definition.json");
    let ecs = json("deploy/ecs/task-definition.json");
    let image = job_container(&job)["image"].clone();
    assert_eq!(batch["containerProperties"]["image"], image);
    assert_eq!(ecs["containerDefinitions"][0]["image"], image);

    let k = job["spec"]["parallelism"].as_u64().expect("parallelism");
    assert_eq!(
        job["spec"]["completions"].as_u64(),
        Some(k),
        "completions = parallelism = K"
    );
    let submit = json("deploy/aws-batch/submit-job.json");
    assert_eq!(
        submit["arrayProperties"]["size"].as_u64(),
        Some(k),
        "Batch array size = K"
    );
    assert_eq!(submit["jobDefinition"], batch["jobDefinitionName"]);
    let run_task = json("deploy/ecs/run-task.json");
    let count = run_task["count"].as_u64().expect("run-task count");
    assert_eq!(count, k, "ECS run-task count = K");
    assert!(count <= 10, "run-task starts at most 10 tasks a call");
    assert_eq!(run_task["taskDefinition"], ecs["family"]);

    // A process holds at most --workers segments at a time: with fewer than
    // K x --workers segments, some processes find nothing to claim. Without
    // --segments, the count is dynbulk's default for a shared run, whose
    // smallest value (an empty table) is checked.
    let help = run_help();
    let number = |flag: &str| -> Option<u64> {
        flag_value(first, flag)
            .map(str::to_owned)
            .or_else(|| help_default(&help, flag))
            .map(|v| v.parse().unwrap())
    };
    let workers = number("--workers").expect("--workers: no value and no default");
    let segments = number("--segments").unwrap_or_else(|| {
        assert!(
            first.iter().any(|a| a == "--join"),
            "the engines run --join"
        );
        u64::from(dynbulk::run::plan::default_segments(
            0,
            true,
            workers as usize,
        ))
    });
    assert!(
        segments >= k * workers,
        "--segments {segments} < K x --workers = {k} x {workers}: some processes would have no segment"
    );
}

#[test]
fn kubernetes_job_retries_every_failure_but_bad_usage_and_uses_irsa() {
    let objects = kubernetes_objects();
    for (file, object) in &objects {
        assert!(
            object["apiVersion"].is_string() && object["kind"].is_string(),
            "{file}"
        );
        let mut metadata = vec![&object["metadata"]];
        metadata.push(&object["spec"]["template"]["metadata"]);
        for meta in metadata {
            for map in ["labels", "annotations"] {
                if let Some(entries) = meta[map].as_object() {
                    for (k, v) in entries {
                        assert!(v.is_string(), "{file}: {map} {k} must be a string, is {v}");
                    }
                }
            }
        }
    }
    let job = one_of_kind(&objects, "Job");
    assert_eq!(job["apiVersion"], "batch/v1");
    let spec = &job["spec"];
    assert_eq!(
        spec["completionMode"], "Indexed",
        "backoffLimitPerIndex needs Indexed"
    );
    assert!(spec["backoffLimitPerIndex"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(spec["podReplacementPolicy"], "Failed");
    let pod = &spec["template"]["spec"];
    assert_eq!(
        pod["restartPolicy"], "Never",
        "podFailurePolicy needs Never"
    );
    let container = job_container(&job);
    let name = container["name"].as_str().unwrap();

    let rules = spec["podFailurePolicy"]["rules"]
        .as_array()
        .expect("podFailurePolicy rules");
    let mut fail_job = BTreeSet::new();
    let mut not_retried = BTreeSet::new();
    for rule in rules {
        let action = rule["action"].as_str().unwrap();
        assert!(
            ["FailJob", "FailIndex", "Count", "Ignore"].contains(&action),
            "unknown action {action}"
        );
        assert_ne!(action, "Ignore", "no failure may be ignored: {rule}");
        let codes = &rule["onExitCodes"];
        assert_eq!(codes["containerName"], name, "{rule}");
        assert_eq!(codes["operator"], "In", "{rule}");
        for code in codes["values"].as_array().unwrap() {
            let code = code.as_u64().expect("exit codes are numbers");
            assert_ne!(code, 0, "Kubernetes rejects exit code 0 with In");
            if action == "FailJob" {
                fail_job.insert(code);
            }
            if action != "Count" {
                not_retried.insert(code);
            }
        }
    }
    assert!(fail_job.contains(&2), "exit 2 must fail the Job: {rules:?}");
    for retried in [3, 130, 137] {
        assert!(
            !not_retried.contains(&retried),
            "exit {retried} must be retried"
        );
    }

    let account = one_of_kind(&objects, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], account["metadata"]["name"]);
    assert_eq!(
        account["metadata"]["namespace"],
        job["metadata"]["namespace"]
    );
    let role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        .as_str()
        .expect("the service account names its IAM role (IRSA)");
    assert!(
        role.starts_with("arn:aws:iam::") && role.contains(":role/"),
        "{role}"
    );

    let kustomization = one_of_kind(&objects, "Kustomization");
    let listed: BTreeSet<String> = string_list(&kustomization["resources"], "resources")
        .into_iter()
        .collect();
    for (file, object) in &objects {
        let file = file.trim_start_matches("deploy/kubernetes/").to_owned();
        if object["kind"] != "Kustomization" {
            assert!(
                listed.contains(&file),
                "kustomization.yaml does not list {file}"
            );
        }
    }
}

#[test]
fn no_access_keys_anywhere() {
    for rel in [
        "deploy/kubernetes/job.yaml",
        "deploy/kubernetes/serviceaccount.yaml",
        "deploy/aws-batch/job-definition.json",
        "deploy/ecs/task-definition.json",
        "Dockerfile",
    ] {
        let text = read(rel);
        for secret in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            assert!(
                !text.contains(secret),
                "{rel} mentions {secret}: use the engine's role"
            );
        }
    }
    let batch = json("deploy/aws-batch/job-definition.json");
    assert!(batch["containerProperties"]["jobRoleArn"]
        .as_str()
        .is_some_and(|r| r.contains(":role/")));
    let ecs = json("deploy/ecs/task-definition.json");
    assert!(ecs["taskRoleArn"]
        .as_str()
        .is_some_and(|r| r.contains(":role/")));
}

/// Whether an AWS Batch `onExitCode` glob matches an exit code: digits, and
/// optionally a trailing `*` for a prefix.
fn batch_glob(pattern: &str, code: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => code.starts_with(prefix),
        None => pattern == code,
    }
}

#[test]
fn batch_array_job_does_not_retry_bad_usage() {
    let def = json("deploy/aws-batch/job-definition.json");
    assert_eq!(def["type"], "container");
    let retry = &def["retryStrategy"];
    let attempts = retry["attempts"].as_u64().expect("attempts");
    assert!(
        (2..=10).contains(&attempts),
        "Batch allows 1 to 10 attempts; 1 never retries"
    );
    let rules = retry["evaluateOnExit"].as_array().expect("evaluateOnExit");
    assert!(
        rules.len() <= 5,
        "Batch takes at most 5 evaluateOnExit conditions"
    );
    // The first rule that matches decides; none matching means a retry.
    let decision = |code: &str| -> String {
        rules
            .iter()
            .find(|r| {
                r.get("onReason").is_none()
                    && r.get("onStatusReason").is_none()
                    && r["onExitCode"]
                        .as_str()
                        .is_some_and(|p| batch_glob(p, code))
            })
            .map_or("RETRY".to_owned(), |r| {
                r["action"].as_str().unwrap().to_uppercase()
            })
    };
    assert_eq!(
        decision("2"),
        "EXIT",
        "exit 2 (bad usage) must not be retried"
    );
    assert_eq!(
        decision("1"),
        "EXIT",
        "exit 1 (done, dead letters): nothing to retry"
    );
    for code in ["3", "130", "137"] {
        assert_eq!(decision(code), "RETRY", "exit {code} must be retried");
    }
    let submit = json("deploy/aws-batch/submit-job.json");
    let size = submit["arrayProperties"]["size"].as_u64().unwrap();
    assert!(
        (2..=10_000).contains(&size),
        "an array job has 2 to 10,000 children"
    );
}

#[test]
fn ecs_task_definition_is_a_fargate_task_with_logs() {
    let def = json("deploy/ecs/task-definition.json");
    assert_eq!(def["networkMode"], "awsvpc");
    assert!(
        string_list(&def["requiresCompatibilities"], "requiresCompatibilities")
            .contains(&"FARGATE".to_owned())
    );
    assert!(
        def["executionRoleArn"].is_string(),
        "Fargate pulls and logs with the execution role"
    );
    // Fargate's CPU/memory pairs (MiB) for the sizes a dynbulk task would use.
    let cpu: u64 = def["cpu"]
        .as_str()
        .expect("cpu is a string")
        .parse()
        .unwrap();
    let memory: u64 = def["memory"]
        .as_str()
        .expect("memory is a string")
        .parse()
        .unwrap();
    let allowed: Vec<u64> = match cpu {
        256 => vec![512, 1024, 2048],
        512 => (1..=4).map(|g| g * 1024).collect(),
        1024 => (2..=8).map(|g| g * 1024).collect(),
        2048 => (4..=16).map(|g| g * 1024).collect(),
        4096 => (8..=30).map(|g| g * 1024).collect(),
        other => panic!("cpu {other}: use 256, 512, 1024, 2048 or 4096"),
    };
    assert!(
        allowed.contains(&memory),
        "Fargate has no {cpu} CPU / {memory} MiB task"
    );
    let containers = def["containerDefinitions"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["essential"], true);
    assert_eq!(c["logConfiguration"]["logDriver"], "awslogs");
    let stop = c["stopTimeout"].as_u64().unwrap_or(30);
    assert!(stop <= 120, "Fargate's stopTimeout is at most 120 s");
}

#[test]
fn the_metrics_port_agrees_everywhere() {
    let (_, args) = &commands()[0];
    let addr = flag_value(args, "--metrics-addr").expect("the command serves metrics");
    let (host, port) = addr.rsplit_once(':').unwrap();
    assert_eq!(
        host, "0.0.0.0",
        "metrics must be reachable from the scraper"
    );
    let port_number: u64 = port.parse().unwrap();

    let job = one_of_kind(&kubernetes_objects(), "Job");
    let annotations = &job["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], port);
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let ports = job_container(&job)["ports"].clone();
    assert!(
        ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["containerPort"].as_u64() == Some(port_number)),
        "the container declares port {port}: {ports}"
    );

    let ecs = json("deploy/ecs/task-definition.json");
    let c = &ecs["containerDefinitions"][0];
    assert!(c["portMappings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["containerPort"].as_u64() == Some(port_number)));
    assert_eq!(c["dockerLabels"]["ECS_PROMETHEUS_EXPORTER_PORT"], port);

    let dockerfile = read("Dockerfile");
    let exposed: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .collect();
    assert_eq!(
        exposed,
        vec![port],
        "the Dockerfile EXPOSEs the metrics port"
    );
}

#[test]
fn the_image_runs_dynbulk_as_the_user_the_job_expects() {
    let dockerfile = read("Dockerfile");
    let last = |instruction: &str| -> String {
        dockerfile
            .lines()
            .filter_map(|l| l.strip_prefix(instruction))
            .next_back()
            .unwrap_or_else(|| panic!("no {instruction}in the Dockerfile"))
            .trim()
            .to_owned()
    };
    assert!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count()
            >= 2,
        "a build stage and a runtime stage"
    );
    assert_eq!(last("ENTRYPOINT "), r#"["dynbulk"]"#);
    assert_eq!(
        last("WORKDIR "),
        "/app",
        "./migrations is looked for in the working directory"
    );
    let user = last("USER ");
    let uid: u64 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    assert_ne!(uid, 0, "the image runs as a non-root user");

    let job = one_of_kind(&kubernetes_objects(), "Job");
    let security = &job["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"].as_u64(), Some(uid));

    let ignore = read(".dockerignore");
    for entry in [".git", "**/target", "**/node_modules"] {
        assert!(
            ignore.lines().any(|l| l.trim() == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

/// DynamoDB's operations, as the SDK's fluent methods name them.
const DYNAMODB_OPERATIONS: &[&str] = &[
    "batch_execute_statement",
    "batch_get_item",
    "batch_write_item",
    "create_backup",
    "create_global_table",
    "create_table",
    "delete_backup",
    "delete_item",
    "delete_resource_policy",
    "delete_table",
    "describe_backup",
    "describe_continuous_backups",
    "describe_contributor_insights",
    "describe_endpoints",
    "describe_export",
    "describe_global_table",
    "describe_global_table_settings",
    "describe_import",
    "describe_kinesis_streaming_destination",
    "describe_limits",
    "describe_table",
    "describe_table_replica_auto_scaling",
    "describe_time_to_live",
    "disable_kinesis_streaming_destination",
    "enable_kinesis_streaming_destination",
    "execute_statement",
    "execute_transaction",
    "export_table_to_point_in_time",
    "get_item",
    "get_resource_policy",
    "import_table",
    "list_backups",
    "list_contributor_insights",
    "list_exports",
    "list_global_tables",
    "list_imports",
    "list_tables",
    "list_tags_of_resource",
    "put_item",
    "put_resource_policy",
    "query",
    "restore_table_from_backup",
    "restore_table_to_point_in_time",
    "scan",
    "tag_resource",
    "transact_get_items",
    "transact_write_items",
    "untag_resource",
    "update_continuous_backups",
    "update_contributor_insights",
    "update_global_table",
    "update_global_table_settings",
    "update_item",
    "update_kinesis_streaming_destination",
    "update_table",
    "update_table_replica_auto_scaling",
    "update_time_to_live",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or(String::new(), |f| {
                f.to_ascii_uppercase().to_string() + c.as_str()
            })
        })
        .collect()
}

#[test]
fn the_iam_policy_allows_exactly_what_dynbulk_calls() {
    // What the deployed binary calls: src/, without the sample-data
    // generator (a separate binary for local endpoints).
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut called = BTreeSet::new();
    for file in files {
        if file
            .components()
            .any(|c| c.as_os_str() == "dynbulk-sample-data")
        {
            continue;
        }
        let text: String = std::fs::read_to_string(&file)
            .unwrap()
            .split_whitespace()
            .collect();
        for op in DYNAMODB_OPERATIONS {
            if text.contains(&format!(".{op}()")) {
                called.insert(format!("dynamodb:{}", pascal(op)));
            }
        }
    }
    assert!(
        called.contains("dynamodb:Scan"),
        "the source scan found no Scan: {called:?}"
    );

    let policy = json("deploy/iam/dynbulk-policy.json");
    let mut allowed = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow");
        let resource = statement["Resource"]
            .as_str()
            .expect("one table per statement");
        assert!(
            resource.starts_with("arn:aws:dynamodb:")
                && resource.contains(":table/")
                && !resource.contains('*'),
            "a named table, no wildcard: {resource}"
        );
        for action in string_list(&statement["Action"], "Action") {
            assert!(!action.contains('*'), "no wildcard actions: {action}");
            allowed.insert(action);
        }
    }
    let missing: Vec<_> = called.difference(&allowed).collect();
    let unused: Vec<_> = allowed.difference(&called).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "deploy/iam/dynbulk-policy.json must allow exactly what src/ calls; \
         missing {missing:?}, allowed but never called {unused:?}"
    );
    for rel in [
        "deploy/iam/trust-eks-irsa.json",
        "deploy/iam/trust-ecs-tasks.json",
    ] {
        assert!(json(rel)["Statement"].is_array(), "{rel}");
    }
}

/// What the Dockerfile's build stage copies from the build context (the
/// sources of its COPY lines before the runtime stage's FROM).
fn builder_copies(dockerfile: &str) -> Vec<PathBuf> {
    let mut stages = 0;
    let mut copied = Vec::new();
    for line in dockerfile.lines() {
        if line.starts_with("FROM ") {
            stages += 1;
        }
        if stages != 1 {
            continue;
        }
        if let Some(rest) = line.strip_prefix("COPY ") {
            let words: Vec<&str> = rest
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let (_, sources) = words.split_last().expect("COPY <src>... <dest>");
            copied.extend(
                sources
                    .iter()
                    .map(|s| PathBuf::from(s.trim_end_matches('/'))),
            );
        }
    }
    copied
}

/// The source files of the targets Cargo.toml declares explicitly ([lib],
/// [[bin]], [[bench]], [[test]], [[example]]): a declared target's file
/// must exist when cargo reads the manifest, whatever is built.
fn manifest_target_paths(manifest: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut section = String::new();
    let (mut name, mut path) = (None::<String>, None::<String>);
    let mut flush = |section: &str, name: &mut Option<String>, path: &mut Option<String>| {
        let default = |dir: &str| name.as_ref().map(|n| format!("{dir}/{n}.rs"));
        let found = path.take().or_else(|| match section {
            "[lib]" => Some("src/lib.rs".to_owned()),
            "[[bin]]" => default("src/bin"),
            "[[bench]]" => default("benches"),
            "[[test]]" => default("tests"),
            "[[example]]" => default("examples"),
            _ => None,
        });
        name.take();
        if let Some(p) = found {
            paths.push(p);
        }
    };
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            flush(&section, &mut name, &mut path);
            section = line.to_owned();
            continue;
        }
        let value = |key: &str| {
            line.strip_prefix(key)
                .map(str::trim_start)
                .and_then(|r| r.strip_prefix('='))
                .map(|r| r.trim().trim_matches('"').to_owned())
        };
        if let Some(v) = value("name") {
            name = Some(v);
        } else if let Some(v) = value("path") {
            path = Some(v);
        }
    }
    flush(&section, &mut name, &mut path);
    paths
}

#[test]
fn the_image_build_copies_every_file_the_binary_compiles_in() {
    let copied = builder_copies(&read("Dockerfile"));
    let is_copied = |rel: &Path| copied.iter().any(|c| rel.starts_with(c));
    for needed in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(
            is_copied(Path::new(needed)),
            "the build stage does not copy {needed}"
        );
    }
    // Every target the manifest names must exist for cargo to read it: in
    // the dependency layer, as a stub the Dockerfile writes; then copied.
    let dockerfile = read("Dockerfile");
    for path in manifest_target_paths(&read("Cargo.toml")) {
        assert!(
            dockerfile.contains(&format!("> {path}"))
                || dockerfile.contains(&format!("touch {path}")),
            "Cargo.toml names {path}: the Dockerfile's dependency layer must write a stub of it"
        );
        assert!(
            is_copied(Path::new(&path)),
            "the build stage does not copy {path}"
        );
    }
    let ignored = read(".dockerignore");
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut included = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for marker in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in text.match_indices(marker) {
                let rest = &text[at + marker.len()..];
                let target = &rest[..rest.find('"').unwrap()];
                let path = file.parent().unwrap().join(target).canonicalize().unwrap();
                let rel = path.strip_prefix(root()).unwrap().to_owned();
                assert!(
                    is_copied(&rel),
                    "{} compiles in {}, which the Dockerfile's build stage does not copy",
                    file.display(),
                    rel.display()
                );
                let top = rel
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy();
                assert!(
                    !ignored.lines().any(|l| l.trim() == top),
                    ".dockerignore leaves out {top}, which the build needs"
                );
                included += 1;
            }
        }
    }
    assert!(included > 0, "no include_str! found: the scan is broken");
}

#[test]
fn the_manifest_scan_finds_every_declared_target() {
    let manifest = "[package]\nname = \"x\"\n\n[lib]\npath = \"src/lib.rs\"\n\n[[bin]]\nname = \"tool\"\n\n\
                    [dependencies]\nserde = \"1\"\n\n[[bench]]\nname = \"speed\"\nharness = false\n\n\
                    [[bench]]\nname = \"other\"\npath = \"benches/o/main.rs\"\n";
    assert_eq!(
        manifest_target_paths(manifest),
        [
            "src/lib.rs",
            "src/bin/tool.rs",
            "benches/speed.rs",
            "benches/o/main.rs"
        ]
    );
}
