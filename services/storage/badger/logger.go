package badger

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/dgraph-io/badger/v4"
)

// SlogLogger routes badger's printf-style logging into slog. Badger is
// chatty at info level (compactions, memtable flushes), so its info and debug
// output is demoted to slog debug. Every badger database here (state
// storage, the audit log) uses it.
func SlogLogger(log *slog.Logger) badger.Logger { return badgerLogger{log: log} }

type badgerLogger struct {
	log *slog.Logger
}

func (l badgerLogger) emit(level slog.Level, format string, args ...any) {
	ctx := context.Background()
	if !l.log.Enabled(ctx, level) {
		return
	}
	l.log.Log(ctx, level, strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (l badgerLogger) Errorf(f string, a ...any)   { l.emit(slog.LevelError, f, a...) }
func (l badgerLogger) Warningf(f string, a ...any) { l.emit(slog.LevelWarn, f, a...) }
func (l badgerLogger) Infof(f string, a ...any)    { l.emit(slog.LevelDebug, f, a...) }
func (l badgerLogger) Debugf(f string, a ...any)   { l.emit(slog.LevelDebug, f, a...) }
