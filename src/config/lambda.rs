//! What Lambda itself tells the extension through the environment: every `AWS_*` variable the
//! bridge reads is read here, once.

use super::env::Env;

/// Lambda's execution models: what the extension's lifecycle can rely on differs between them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExecutionModel {
    /// One invocation at a time; INVOKE events; frozen between invocations.
    #[default]
    Default,
    /// Lambda Managed Instances (`AWS_LAMBDA_INITIALIZATION_TYPE=lambda-managed-instances`):
    /// continuous, several invocations at once, no INVOKE event for extensions, no freeze.
    ManagedInstances,
}

impl ExecutionModel {
    /// The value of `AWS_LAMBDA_INITIALIZATION_TYPE` that selects Managed Instances.
    pub const MANAGED_INSTANCES_INIT_TYPE: &'static str = "lambda-managed-instances";

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionModel::Default => "default",
            ExecutionModel::ManagedInstances => "managed-instances",
        }
    }

    pub fn is_managed_instances(self) -> bool {
        self == ExecutionModel::ManagedInstances
    }

    /// What the extension registers for: Managed Instances refuses INVOKE (403
    /// `Extension.InvalidEventType`), so SHUTDOWN only there.
    pub fn extension_events(self) -> &'static [&'static str] {
        match self {
            ExecutionModel::Default => &["INVOKE", "SHUTDOWN"],
            ExecutionModel::ManagedInstances => &["SHUTDOWN"],
        }
    }

    /// The Telemetry API schema to subscribe with: Managed Instances refuses older ones (400);
    /// the default model keeps the one the mapping was written against.
    pub fn telemetry_schema(self) -> &'static str {
        match self {
            ExecutionModel::Default => "2022-12-13",
            ExecutionModel::ManagedInstances => "2025-01-29",
        }
    }
}

/// The execution environment, as Lambda describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LambdaEnv {
    /// `AWS_LAMBDA_RUNTIME_API`: host:port of the Extensions and Telemetry APIs.
    pub runtime_api: String,
    /// `AWS_SAM_LOCAL=true`: running under SAM's local emulator.
    pub sam_local: bool,
    pub function_name: Option<String>,
    pub function_version: Option<String>,
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub region: Option<String>,
    /// `AWS_LAMBDA_LOG_STREAM_NAME`: names this execution environment.
    pub log_stream: Option<String>,
    pub log_group: Option<String>,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, in MB.
    pub memory_mb: Option<u64>,
    /// `AWS_LAMBDA_INITIALIZATION_TYPE` (on-demand, provisioned-concurrency, snap-start,
    /// lambda-managed-instances).
    pub initialization_type: Option<String>,
    /// Which execution model that is.
    pub model: ExecutionModel,
}

impl LambdaEnv {
    /// `None` without `AWS_LAMBDA_RUNTIME_API`: not a Lambda environment.
    pub fn read(env: &Env) -> Option<LambdaEnv> {
        Some(LambdaEnv {
            runtime_api: env.get("AWS_LAMBDA_RUNTIME_API")?,
            sam_local: env
                .get("AWS_SAM_LOCAL")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            function_name: env.get("AWS_LAMBDA_FUNCTION_NAME"),
            function_version: env.get("AWS_LAMBDA_FUNCTION_VERSION"),
            region: env
                .get("AWS_REGION")
                .or_else(|| env.get("AWS_DEFAULT_REGION")),
            log_stream: env.get("AWS_LAMBDA_LOG_STREAM_NAME"),
            log_group: env.get("AWS_LAMBDA_LOG_GROUP_NAME"),
            memory_mb: env
                .get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
                .and_then(|m| m.trim().parse().ok()),
            model: match env.get("AWS_LAMBDA_INITIALIZATION_TYPE") {
                Some(t) if t.trim() == ExecutionModel::MANAGED_INSTANCES_INIT_TYPE => {
                    ExecutionModel::ManagedInstances
                }
                _ => ExecutionModel::Default,
            },
            initialization_type: env
                .get("AWS_LAMBDA_INITIALIZATION_TYPE")
                .map(|t| t.trim().to_string()),
        })
    }
}
