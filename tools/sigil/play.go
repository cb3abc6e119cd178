package main

import (
	"context"
	"io"
	"os"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"
	"github.com/spf13/cobra"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit/recording"
)

type playOptions struct {
	sessionID string
	speed     float64
	idleLimit time.Duration
	format    string
}

func (a *app) playCommand() *cobra.Command {
	var opts playOptions
	cmd := &cobra.Command{
		Use:   "play SESSION_ID",
		Short: "Replay a recorded SSH session in the terminal",
		Long: `Replay an interactive SSH session the gateway recorded, with its original
timing. SESSION_ID is in the ssh.session.start and ssh.session.end audit
events (sigilctl audit search --type ssh.session.start). You may replay your
own sessions; others' need a role rule allowing "read" on "recordings".

--format cast prints the recording itself (asciicast v2, for asciinema or a
file) instead of replaying it.`,
		Example: `  sigil play 0f8fad5b-d9cb-469f-a165-70867728950e
  sigil play 0f8fad5b-d9cb-469f-a165-70867728950e --speed 4 --idle-limit 1s
  sigil play 0f8fad5b-d9cb-469f-a165-70867728950e --format cast > session.cast`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.sessionID = args[0]
			return a.play(cmd.Context(), opts)
		},
	}
	f := cmd.Flags()
	f.Float64Var(&opts.speed, "speed", 1, "playback speed factor (0 or less: print everything at once)")
	f.DurationVar(&opts.idleLimit, "idle-limit", 0, "cap pauses at this length (e.g. 2s); 0 keeps them")
	f.StringVar(&opts.format, "format", "text", "text (replay) or cast (print the asciicast file)")
	return cmd
}

func (a *app) play(ctx context.Context, opts playOptions) error {
	if err := recording.CheckID(opts.sessionID); err != nil {
		return trace.Wrap(err)
	}
	if opts.format != "text" && opts.format != "cast" {
		return trace.BadParameter("--format: %q is not one of text, cast", opts.format)
	}
	p, clt, err := a.dbClient()
	if err != nil {
		return trace.Wrap(err)
	}
	defer clt.Close()
	// Downloaded first: the client bounds each call by --timeout, and a
	// replay takes as long as the session did.
	stream, err := clt.SSH.GetRecording(ctx, connect.NewRequest(&sigilv1.GetRecordingRequest{SessionId: opts.sessionID}))
	if err != nil {
		return apiError(err, p.Proxy)
	}
	defer stream.Close()
	tmp, err := os.CreateTemp("", "sigil-play-*.cast")
	if err != nil {
		return trace.ConvertSystemError(err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	for stream.Receive() {
		if _, err := tmp.Write(stream.Msg().GetData()); err != nil {
			return trace.ConvertSystemError(err)
		}
	}
	if err := stream.Err(); err != nil {
		return apiError(err, p.Proxy)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return trace.ConvertSystemError(err)
	}
	pr := tmp
	if opts.format == "cast" {
		_, err := io.Copy(a.stdout, pr)
		return trace.Wrap(err)
	}
	speed := opts.speed
	if speed <= 0 {
		speed = -1
	}
	return trace.Wrap(recording.Play(ctx, a.stdout, pr, recording.PlayOptions{Speed: speed, IdleLimit: opts.idleLimit}))
}
