//! Why a job failed: a stable machine-readable kind (the `error` word of a failure record) and a
//! message that says what to do.

use serde::{Deserialize, Serialize};

/// The stable words of `failed/<name>.error.json`'s `error` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The file is not a valid `.npy`/`.npz`/`.safetensors` (or is truncated).
    BadFile,
    /// The job file could not be read.
    Io,
    /// Over the model's `max_job_bytes`.
    TooLarge,
    /// The name has no job extension.
    UnknownFormat,
    /// The name cannot be served: not UTF-8, too long, or reserved.
    BadName,
    /// A symlink, directory, FIFO, socket or device in `incoming/`.
    NotRegular,
    /// Missing, extra, or inconsistent named inputs.
    WrongInput,
    WrongDtype,
    WrongShape,
    /// The forward pass failed.
    ModelError,
    /// The output could not be written.
    OutputError,
    /// The job was running at too many agent crashes.
    CrashedAgent,
    /// With `on_deadline = "fail"`: the job could no longer finish by its deadline, so it was
    /// not run.
    DeadlineExceeded,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::BadFile,
        ErrorKind::Io,
        ErrorKind::TooLarge,
        ErrorKind::UnknownFormat,
        ErrorKind::BadName,
        ErrorKind::NotRegular,
        ErrorKind::WrongInput,
        ErrorKind::WrongDtype,
        ErrorKind::WrongShape,
        ErrorKind::ModelError,
        ErrorKind::OutputError,
        ErrorKind::CrashedAgent,
        ErrorKind::DeadlineExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadFile => "bad_file",
            ErrorKind::Io => "io",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::UnknownFormat => "unknown_format",
            ErrorKind::BadName => "bad_name",
            ErrorKind::NotRegular => "not_regular",
            ErrorKind::WrongInput => "wrong_input",
            ErrorKind::WrongDtype => "wrong_dtype",
            ErrorKind::WrongShape => "wrong_shape",
            ErrorKind::ModelError => "model_error",
            ErrorKind::OutputError => "output_error",
            ErrorKind::CrashedAgent => "crashed_agent",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job-level failure: what goes into the failure record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub kind: ErrorKind,
    pub message: String,
}

impl JobError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        JobError {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_and_as_str_spell_every_kind_alike() {
        for k in ErrorKind::ALL {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::Value::String(k.as_str().into())
            );
        }
    }
}
