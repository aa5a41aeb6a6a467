//! The one map from domain errors to gRPC status codes. Domain code
//! (`arbor_agent`, the engine crates) returns its own `thiserror` enums;
//! the services turn them into a [`Status`] here and nowhere else.

use arbor_agent::access::Denied;
use arbor_agent::error::OpError;
use arbor_index::IndexError;
use tonic::{Code, Status};

/// A refused call.
pub fn denied(e: Denied) -> Status {
    let code = match &e {
        Denied::Unauthenticated(_) => Code::Unauthenticated,
        Denied::NotAllowed(_) => Code::PermissionDenied,
        Denied::OverRate(_) => Code::ResourceExhausted,
    };
    Status::new(code, e.to_string())
}

/// The one mapping of source (system) errors to gRPC status codes.
pub fn source_status(e: arbor_source::SourceError) -> Status {
    use arbor_source::SourceError as E;
    let code = match &e {
        E::Open { .. } | E::Read { .. } => Code::Unavailable,
        E::Schema { .. } | E::Value { .. } | E::Write { .. } => Code::FailedPrecondition,
        E::Stopped => Code::Cancelled,
    };
    Status::new(code, e.to_string())
}

/// The one mapping of index errors to gRPC status codes.
pub fn index_status(e: IndexError) -> Status {
    let code = match &e {
        IndexError::Corrupt { .. } => Code::DataLoss,
        IndexError::IncompleteBuild { .. } => Code::FailedPrecondition,
        IndexError::Format { .. }
        | IndexError::EncodingVersion { .. }
        | IndexError::KeyId { .. }
        | IndexError::Schema { .. }
        | IndexError::RepeatedKeys { .. } => Code::FailedPrecondition,
        IndexError::InvalidRequest(_) => Code::InvalidArgument,
        IndexError::Source(_) => Code::Unavailable,
        IndexError::Storage { .. } | IndexError::Io { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// A failed or refused operation.
pub fn op(e: OpError) -> Status {
    let code = match e {
        OpError::Index(e) => return index_status(e),
        OpError::Source(e) => return source_status(e),
        OpError::UnknownDataset(_) | OpError::NotFound(_) => Code::NotFound,
        OpError::NoSystem(_) | OpError::NotReady(_) => Code::FailedPrecondition,
        OpError::Invalid(_) => Code::InvalidArgument,
        OpError::Unavailable(_) => Code::Unavailable,
        OpError::Busy(_) => Code::ResourceExhausted,
        OpError::Conflict(_) => Code::Aborted,
        OpError::Forbidden(_) => Code::PermissionDenied,
        OpError::DataLoss(_) => Code::DataLoss,
        OpError::Internal(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}
