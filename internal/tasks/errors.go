package tasks

import (
	"errors"
	"fmt"
)

// Error is a task failure that names the Python exception Python's AsyncResult.get() raises:
// Module.Type(*Args). Module "builtins" gives Python's own classes (ValueError, RuntimeError,
// TypeError); any other module makes Celery synthesize a class of that name.
type Error struct {
	Type   string // exception class name, e.g. "RuntimeError"
	Module string // e.g. "builtins"
	Args   []any  // exception args; usually one message string
	Cause  error  // optional wrapped Go error
}

func (e *Error) Error() string {
	if len(e.Args) == 1 {
		return fmt.Sprintf("%s: %v", e.Type, e.Args[0])
	}
	return fmt.Sprintf("%s%v", e.Type, e.Args)
}

// Unwrap returns the wrapped cause.
func (e *Error) Unwrap() error { return e.Cause }

// Exception returns an *Error for the Python exception module.typ(message).
func Exception(module, typ, message string) *Error {
	return &Error{Type: typ, Module: module, Args: []any{message}}
}

// Common Python exception kinds handlers use for bad input.
var (
	// TypeError is what Python raises for a missing or surplus argument.
	TypeError = func(format string, a ...any) *Error {
		return Exception("builtins", "TypeError", fmt.Sprintf(format, a...))
	}
	// ValueError is what Python raises for an argument of the right type and a bad value.
	ValueError = func(format string, a ...any) *Error {
		return Exception("builtins", "ValueError", fmt.Sprintf(format, a...))
	}
)

// AsError returns err as an *Error: an *Error in err's chain as it is, anything else as
// builtins.Exception(err.Error()).
func AsError(err error) *Error {
	var te *Error
	if errors.As(err, &te) {
		return te
	}
	return &Error{Type: "Exception", Module: "builtins", Args: []any{err.Error()}, Cause: err}
}
