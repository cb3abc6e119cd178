package testenv

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// Chromium is a headless Chromium driven over the DevTools protocol: a
// real browser (JavaScript, cookies, SameSite, redirects) for end-to-end
// tests of browser flows.
type Chromium struct {
	t    testing.TB
	cmd  *exec.Cmd
	conn *websocket.Conn

	mu      sync.Mutex
	nextID  int
	pending map[int]chan cdpMessage
	closed  chan struct{}
}

type cdpMessage struct {
	ID        int             `json:"id,omitempty"`
	Method    string          `json:"method,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Params    any             `json:"params,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

var devtoolsRe = regexp.MustCompile(`DevTools listening on (ws://\S+)`)

// StartChromium starts headless Chromium (Debian package chromium). It
// accepts the TLS certificates of the servers at trustAddrs (host:port,
// verified against caPEM first): Chromium has no flag to trust a CA, so
// it is told the exact keys instead.
func StartChromium(t testing.TB, caPEM []byte, trustAddrs ...string) *Chromium {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: apt-get install -y chromium (scripts/test-deps.sh does it as root)")
	}
	var spkis []string
	for _, addr := range trustAddrs {
		spkis = append(spkis, leafSPKIHash(t, caPEM, addr))
	}
	args := []string{
		"--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
		"--user-data-dir=" + t.TempDir(),
		"--remote-debugging-port=0", "--remote-allow-origins=http://127.0.0.1",
		"about:blank",
	}
	if len(spkis) > 0 {
		args = append(args, "--ignore-certificate-errors-spki-list="+strings.Join(spkis, ","))
	}
	c := &Chromium{t: t, pending: map[int]chan cdpMessage{}, closed: make(chan struct{})}
	c.cmd = exec.Command(bin, args...)
	stderr := &syncBuffer{}
	c.cmd.Stderr = stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	t.Cleanup(c.stop)
	var wsURL string
	Eventually(t, 30*time.Second, func() error {
		m := devtoolsRe.FindStringSubmatch(stderr.String())
		if m == nil {
			return fmt.Errorf("chromium has not printed its DevTools address yet:\n%s", stderr)
		}
		wsURL = m[1]
		return nil
	})
	cfg, err := websocket.NewConfig(wsURL, "http://127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if c.conn, err = websocket.DialConfig(cfg); err != nil {
		t.Fatalf("connecting to chromium's DevTools at %s: %v", wsURL, err)
	}
	c.conn.MaxPayloadBytes = 64 << 20
	go c.readLoop()
	return c
}

func leafSPKIHash(t testing.TB, caPEM []byte, addr string) string {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatalf("fetching the certificate of %s: %v", addr, err)
	}
	defer conn.Close()
	sum := sha256.Sum256(conn.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

func (c *Chromium) readLoop() {
	defer close(c.closed)
	for {
		var msg cdpMessage
		if err := websocket.JSON.Receive(c.conn, &msg); err != nil {
			return
		}
		if msg.ID == 0 {
			continue // events are not used
		}
		c.mu.Lock()
		ch := c.pending[msg.ID]
		delete(c.pending, msg.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- msg
		}
	}
}

// call sends one DevTools command and waits for its answer.
func (c *Chromium) call(sessionID, method string, params any, out any) error {
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	ch := make(chan cdpMessage, 1)
	c.pending[id] = ch
	c.mu.Unlock()
	if err := websocket.JSON.Send(c.conn, cdpMessage{ID: id, Method: method, SessionID: sessionID, Params: params}); err != nil {
		return err
	}
	select {
	case msg := <-ch:
		if msg.Error != nil {
			return fmt.Errorf("%s: %s", method, msg.Error.Message)
		}
		if out != nil {
			return json.Unmarshal(msg.Result, out)
		}
		return nil
	case <-c.closed:
		return errors.New("chromium closed the DevTools connection")
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: no answer from chromium", method)
	}
}

func (c *Chromium) stop() {
	if c.conn != nil {
		_ = c.call("", "Browser.close", nil, nil)
		c.conn.Close()
	}
	done := make(chan struct{})
	go func() {
		_ = c.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// Tab is one browser tab (its own cookie jar: a fresh browser context).
type Tab struct {
	c       *Chromium
	session string
}

// NewTab opens a tab in a new browser context, so tabs share no cookies.
func (c *Chromium) NewTab() *Tab {
	c.t.Helper()
	var ctxRes struct {
		BrowserContextID string `json:"browserContextId"`
	}
	if err := c.call("", "Target.createBrowserContext", map[string]any{}, &ctxRes); err != nil {
		c.t.Fatal(err)
	}
	var target struct {
		TargetID string `json:"targetId"`
	}
	if err := c.call("", "Target.createTarget", map[string]any{"url": "about:blank", "browserContextId": ctxRes.BrowserContextID}, &target); err != nil {
		c.t.Fatal(err)
	}
	var attached struct {
		SessionID string `json:"sessionId"`
	}
	if err := c.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &attached); err != nil {
		c.t.Fatal(err)
	}
	return &Tab{c: c, session: attached.SessionID}
}

// Navigate opens url in the tab.
func (tab *Tab) Navigate(url string) {
	tab.c.t.Helper()
	var res struct {
		ErrorText string `json:"errorText"`
	}
	if err := tab.c.call(tab.session, "Page.navigate", map[string]any{"url": url}, &res); err != nil {
		tab.c.t.Fatal(err)
	}
	if res.ErrorText != "" {
		tab.c.t.Fatalf("navigating to %s: %s", url, res.ErrorText)
	}
}

// Eval runs JavaScript in the page and returns its value as a string
// (JSON for non-strings); a navigation in progress makes it fail.
func (tab *Tab) Eval(js string) (string, error) {
	var res struct {
		Result struct {
			Type  string          `json:"type"`
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	if err := tab.c.call(tab.session, "Runtime.evaluate", map[string]any{"expression": js, "returnByValue": true}, &res); err != nil {
		return "", err
	}
	if res.ExceptionDetails != nil {
		return "", fmt.Errorf("javascript error: %s", res.ExceptionDetails.Text)
	}
	if res.Result.Type == "string" {
		var s string
		_ = json.Unmarshal(res.Result.Value, &s)
		return s, nil
	}
	return string(res.Result.Value), nil
}

// WaitFor polls a JavaScript condition until it is true.
func (tab *Tab) WaitFor(cond string, timeout time.Duration) {
	tab.c.t.Helper()
	Eventually(tab.c.t, timeout, func() error {
		v, err := tab.Eval("document.readyState === 'complete' && !!(" + cond + ")")
		if err != nil {
			return err
		}
		if v != "true" {
			loc, _ := tab.Eval("location.href + '\\n' + (document.body ? document.body.innerText : '')")
			return fmt.Errorf("waiting for %s; the page is %s", cond, loc)
		}
		return nil
	})
}

// Run runs JavaScript that acts on the page (fills a form, clicks).
func (tab *Tab) Run(js string) {
	tab.c.t.Helper()
	if _, err := tab.Eval(js); err != nil {
		tab.c.t.Fatal(err)
	}
}

// Text is the page's location and visible text.
func (tab *Tab) Text() string {
	v, _ := tab.Eval("location.href + '\\n' + document.body.innerText")
	return v
}
