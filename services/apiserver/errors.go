package apiserver

import (
	"context"
	"errors"
	"log/slog"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
)

// toConnect maps a trace error to a Connect error once, here. Internal
// errors are logged and replaced by a generic message so that no stack
// trace or storage detail reaches a client.
func toConnect(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	msg := trace.UserMessage(err)
	switch {
	case trace.IsNotFound(err):
		return connect.NewError(connect.CodeNotFound, errors.New(msg))
	case trace.IsAlreadyExists(err):
		return connect.NewError(connect.CodeAlreadyExists, errors.New(msg))
	case trace.IsAccessDenied(err):
		return connect.NewError(connect.CodePermissionDenied, errors.New(msg))
	case trace.IsBadParameter(err):
		return connect.NewError(connect.CodeInvalidArgument, errors.New(msg))
	case trace.IsLimitExceeded(err):
		return connect.NewError(connect.CodeResourceExhausted, errors.New(msg))
	case trace.IsCompareFailed(err):
		return connect.NewError(connect.CodeAborted, errors.New(msg))
	case trace.IsNotImplemented(err):
		return connect.NewError(connect.CodeUnimplemented, errors.New(msg))
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, errors.New("request canceled"))
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("request timed out"))
	}
	log.ErrorContext(ctx, "API call failed", "error", err)
	return connect.NewError(connect.CodeInternal, errors.New("internal error; see the sigild log"))
}

// errorInterceptor applies toConnect to every handler result.
func errorInterceptor(log *slog.Logger) connect.UnaryInterceptorFunc {
	return func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			resp, err := next(ctx, req)
			return resp, toConnect(ctx, log, err)
		}
	}
}
