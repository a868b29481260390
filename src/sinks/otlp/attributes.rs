//! Attribute names of our own, where no OpenTelemetry convention has one yet.

/// The invocation span's and its log records' tenant attribute. No OpenTelemetry convention
/// names Lambda's tenant isolation yet; this follows the `aws.lambda.*` names used here.
pub const TENANT_ID: &str = "aws.lambda.tenant.id";
