package web

import (
	"net/http"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
	"github.com/sigilhq/sigil/audit/recording"
)

// recordingData is the replay page's content.
type recordingData struct {
	ID      string
	CastURL string
}

// recordingPage replays a recorded SSH session in the browser
// (web/static/player.js renders the asciicast). Who may replay what is the
// API's decision (their own sessions, or a rule on "recordings"), checked
// when the player fetches the cast.
func (h *Handler) recordingPage(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	id := r.PathValue("id")
	if err := recording.CheckID(id); err != nil {
		h.consoleError(w, r, s, trace.BadParameter("%q is not a recording id", id))
		return
	}
	h.renderPage(w, http.StatusOK, "recording", &view{Title: "Session recording", Nav: "audit", Session: s,
		Data: recordingData{ID: id, CastURL: "/web/recordings/" + id + "/cast"}})
}

// recordingCast streams the asciicast of a recording as the signed-in
// user fetches it through the API.
func (h *Handler) recordingCast(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	id := r.PathValue("id")
	if err := recording.CheckID(id); err != nil {
		h.consoleError(w, r, s, trace.BadParameter("%q is not a recording id", id))
		return
	}
	stream, err := h.console.api.nodes.GetRecording(h.as(r, s), connect.NewRequest(&sigilv1.GetRecordingRequest{SessionId: id}))
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	defer stream.Close()
	started := false
	for stream.Receive() {
		if !started {
			w.Header().Set("Content-Type", "application/x-asciicast")
			w.Header().Set("Cache-Control", "no-store")
			started = true
		}
		if _, err := w.Write(stream.Msg().GetData()); err != nil {
			return
		}
	}
	if err := stream.Err(); err != nil {
		if !started {
			h.consoleError(w, r, s, err)
			return
		}
		h.cfg.Logger.Warn("Streaming a recording failed.", "recording", id, "error", err)
	}
}
