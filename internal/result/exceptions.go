package result

import (
	"math"

	"denis.io/fleet/internal/protocol"
)

// Modules of the exception classes a Go worker reports. Python's reader uses the real class
// when the module is imported on its side (builtins and celery.exceptions always are, and
// celery.exceptions imports billiard.exceptions); otherwise it synthesizes an Exception
// subclass of that name in celery.exceptions.
const (
	ModuleBuiltins           = "builtins"
	ModuleCeleryExceptions   = "celery.exceptions"
	ModuleBilliardExceptions = "billiard.exceptions"
)

// Reasons carried by TaskRevokedError, as Celery writes them.
const (
	RevokedReasonRevoked    = "revoked"
	RevokedReasonExpired    = "expired"
	RevokedReasonTerminated = "terminated"
)

// Exception returns the JSON form of excType(*args) from module: what Python's get()
// re-raises as module.excType(*args).
func Exception(excType, module string, args ...any) protocol.ExceptionInfo {
	if args == nil {
		args = []any{}
	}
	return protocol.ExceptionInfo{Type: excType, Message: args, Module: module}
}

// Failure returns the JSON form of excType(message) from module, e.g.
// Failure("ValueError", ModuleBuiltins, "boom") → ValueError('boom').
func Failure(excType, module, message string) protocol.ExceptionInfo {
	return Exception(excType, module, message)
}

// Revoked is the result of a REVOKED state: celery.exceptions.TaskRevokedError(reason),
// reason one of the RevokedReason* constants.
func Revoked(reason string) protocol.ExceptionInfo {
	return Exception("TaskRevokedError", ModuleCeleryExceptions, reason)
}

// NotRegistered is the FAILURE result Celery stores for a message naming an unknown task:
// celery.exceptions.NotRegistered(taskName).
func NotRegistered(taskName string) protocol.ExceptionInfo {
	return Exception("NotRegistered", ModuleCeleryExceptions, taskName)
}

// TimeLimitExceeded is the FAILURE result of a task killed by its hard time limit:
// billiard.exceptions.TimeLimitExceeded(seconds), as Celery's worker stores it (a whole
// number of seconds is written as an integer, as the timelimit header usually carries it).
func TimeLimitExceeded(seconds float64) protocol.ExceptionInfo {
	if seconds == math.Trunc(seconds) && math.Abs(seconds) < 1<<53 {
		return Exception("TimeLimitExceeded", ModuleBilliardExceptions, int64(seconds))
	}
	return Exception("TimeLimitExceeded", ModuleBilliardExceptions, seconds)
}

// WorkerLost is the FAILURE result of a task whose worker went away while running it:
// billiard.exceptions.WorkerLostError(message).
func WorkerLost(message string) protocol.ExceptionInfo {
	return Exception("WorkerLostError", ModuleBilliardExceptions, message)
}

// MaxRetriesExceeded is celery.exceptions.MaxRetriesExceededError(message), stored when a
// task asked to retry once too often without an exception of its own.
func MaxRetriesExceeded(message string) protocol.ExceptionInfo {
	return Exception("MaxRetriesExceededError", ModuleCeleryExceptions, message)
}
