//! The OpenTelemetry resource: which function, version and execution environment the
//! telemetry is about (the FaaS conventions), from registration and Lambda's variables.

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use super::config::OtlpConfig;
use crate::config::lambda::LambdaEnv;
use crate::lifecycle::Registration;

/// Everything the resource is made of, from the environment and registration.
#[derive(Debug, Clone, Default)]
pub struct FunctionIdentity {
    pub function_name: Option<String>,
    pub function_version: Option<String>,
    pub region: Option<String>,
    pub account_id: Option<String>,
    pub log_stream: Option<String>,
    pub log_group: Option<String>,
    pub memory_mb: Option<u64>,
    /// Lambda Managed Instances: invocations overlap, no cold starts, no runtimeDone.
    pub managed_instances: bool,
}

impl FunctionIdentity {
    /// What registration said, completed by the environment's `AWS_*` variables.
    pub fn new(registration: &Registration, lambda: &LambdaEnv) -> FunctionIdentity {
        FunctionIdentity {
            function_name: registration
                .function_name
                .clone()
                .or_else(|| lambda.function_name.clone()),
            function_version: registration
                .function_version
                .clone()
                .or_else(|| lambda.function_version.clone()),
            region: lambda.region.clone(),
            account_id: registration.account_id.clone(),
            log_stream: lambda.log_stream.clone(),
            log_group: lambda.log_group.clone(),
            memory_mb: lambda.memory_mb,
            managed_instances: lambda.model.is_managed_instances(),
        }
    }
}

/// The OTel resource: FaaS conventions, then `OTEL_RESOURCE_ATTRIBUTES`, then `service.name`.
pub fn build_resource(identity: &FunctionIdentity, config: &OtlpConfig) -> Resource {
    let mut attributes = vec![
        KeyValue::new("cloud.provider", "aws"),
        KeyValue::new("cloud.platform", "aws_lambda"),
    ];
    let mut add = |key: &'static str, value: &Option<String>| {
        if let Some(v) = value {
            attributes.push(KeyValue::new(key, v.clone()));
        }
    };
    add("cloud.region", &identity.region);
    add("cloud.account.id", &identity.account_id);
    add("faas.name", &identity.function_name);
    add("faas.version", &identity.function_version);
    add("faas.instance", &identity.log_stream);
    if let Some(group) = &identity.log_group {
        attributes.push(KeyValue::new(
            "aws.log.group.names",
            opentelemetry::Value::Array(
                vec![opentelemetry::StringValue::from(group.clone())].into(),
            ),
        ));
    }
    if let Some(mb) = identity.memory_mb {
        attributes.push(KeyValue::new("faas.max_memory", (mb * 1024 * 1024) as i64));
    }
    let from_env = config
        .resource_attributes
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    let service_name = config
        .service_name
        .clone()
        .or_else(|| {
            config
                .resource_attributes
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        })
        .or_else(|| identity.function_name.clone())
        .unwrap_or_else(|| "unknown_service".into());
    Resource::builder_empty()
        .with_attributes(attributes)
        .with_attributes(from_env)
        .with_service_name(service_name)
        .build()
}
