package protocol

// ExceptionFrom builds the JSON form of a Python exception: ExceptionFrom("ValueError",
// "builtins", "boom") is what Python stores for ValueError('boom'), and AsyncResult.get()
// re-raises it as module.type(*args). A module the reading process has not imported makes
// Celery synthesize a class of that name, so any Go error type can be reported. No
// arguments give an empty exc_message list, never null.
func ExceptionFrom(excType, module string, args ...any) ExceptionInfo {
	msg := make([]any, len(args))
	copy(msg, args)
	return ExceptionInfo{Type: excType, Message: msg, Module: module}
}
