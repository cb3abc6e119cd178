package web

import (
	"context"
	"io"
	"net/http"
	"sync"

	"github.com/sigilhq/sigil/api/gen/sigil/v1/sigilv1connect"
	"github.com/sigilhq/sigil/identity/certid"
)

// apiBaseURL is a placeholder: requests never leave the process.
const apiBaseURL = "http://sigil.internal"

// CallerFunc puts a console user into a context for the in-process API
// (apiserver.WithWebCaller): the console authenticated them, and the API
// applies the same policy as to a certificate holder. binding names the
// console session.
type CallerFunc func(ctx context.Context, id *certid.Identity, binding string) context.Context

// apiClients are the Connect clients the console calls the API with, as
// the signed-in user.
type apiClients struct {
	databases sigilv1connect.DatabaseServiceClient
	nodes     sigilv1connect.SSHServiceClient
	audit     sigilv1connect.AuditServiceClient
	locks     sigilv1connect.LockServiceClient
	mfa       sigilv1connect.MFAServiceClient
	requests  sigilv1connect.RequestServiceClient
	approvals sigilv1connect.ApprovalServiceClient
	sso       sigilv1connect.SSOServiceClient
}

func newAPIClients(api http.Handler) *apiClients {
	hc := &http.Client{Transport: inProcess{api}}
	return &apiClients{
		databases: sigilv1connect.NewDatabaseServiceClient(hc, apiBaseURL),
		nodes:     sigilv1connect.NewSSHServiceClient(hc, apiBaseURL),
		audit:     sigilv1connect.NewAuditServiceClient(hc, apiBaseURL),
		locks:     sigilv1connect.NewLockServiceClient(hc, apiBaseURL),
		mfa:       sigilv1connect.NewMFAServiceClient(hc, apiBaseURL),
		requests:  sigilv1connect.NewRequestServiceClient(hc, apiBaseURL),
		approvals: sigilv1connect.NewApprovalServiceClient(hc, apiBaseURL),
		sso:       sigilv1connect.NewSSOServiceClient(hc, apiBaseURL),
	}
}

type remoteAddrKey struct{}

// withRemoteAddr passes the browser's address to the API (audit events).
func withRemoteAddr(ctx context.Context, addr string) context.Context {
	return context.WithValue(ctx, remoteAddrKey{}, addr)
}

// inProcess is an http.RoundTripper that serves requests with a handler
// in this process, streaming the response body (for server streams).
type inProcess struct{ h http.Handler }

func (t inProcess) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	if addr, _ := req.Context().Value(remoteAddrKey{}).(string); addr != "" {
		req.RemoteAddr = addr
	}
	req.RequestURI = req.URL.RequestURI()
	if req.Body == nil {
		req.Body = http.NoBody
	}
	pr, pw := io.Pipe()
	w := &pipeResponse{header: http.Header{}, body: pw, ready: make(chan struct{})}
	go func() {
		defer func() {
			w.WriteHeader(http.StatusOK)
			pw.Close()
		}()
		t.h.ServeHTTP(w, req)
	}()
	select {
	case <-w.ready:
	case <-req.Context().Done():
		pr.CloseWithError(req.Context().Err())
		return nil, req.Context().Err()
	}
	return &http.Response{
		Status: http.StatusText(w.status), StatusCode: w.status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: w.sent, Body: pr, ContentLength: -1, Request: req,
	}, nil
}

// pipeResponse is the handler's side of inProcess.
type pipeResponse struct {
	header http.Header
	sent   http.Header
	body   *io.PipeWriter
	once   sync.Once
	status int
	ready  chan struct{}
}

func (w *pipeResponse) Header() http.Header { return w.header }

func (w *pipeResponse) WriteHeader(status int) {
	w.once.Do(func() {
		w.status = status
		w.sent = w.header.Clone()
		close(w.ready)
	})
}

func (w *pipeResponse) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

// Flush is a no-op: every Write already reaches the reader.
func (w *pipeResponse) Flush() {}
