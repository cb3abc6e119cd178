package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"
)

// Browser is a user's browser without JavaScript: an HTTP client with a
// cookie jar that follows redirects and submits HTML forms. It trusts the
// gateway CA for https and talks plain http to test IdPs.
type Browser struct {
	t      testing.TB
	Client *http.Client
	// Stop, when set, ends redirect following at a URL it accepts: the
	// page returned is the redirect itself (its Location is Page.URL).
	Stop func(*url.URL) bool
}

// Page is a loaded page.
type Page struct {
	// URL is where the page came from (or, when Browser.Stop ended the
	// redirects, where the last redirect pointed).
	URL    *url.URL
	Status int
	Body   string
	Forms  []Form
}

// Form is an HTML form with its inputs' names and values.
type Form struct {
	Action string
	Method string
	Values url.Values
}

// NewBrowser returns a browser trusting caPEM (the gateway's tls-ca).
func NewBrowser(t testing.TB, caPEM []byte) *Browser {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("NewBrowser: no certificate in the CA PEM")
	}
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	b := &Browser{t: t}
	b.Client = &http.Client{
		Jar:     jar,
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13},
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > 20 {
				return fmt.Errorf("more than 20 redirects")
			}
			if b.Stop != nil && b.Stop(req.URL) {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
	return b
}

// Get loads a page, following redirects.
func (b *Browser) Get(u string) *Page {
	b.t.Helper()
	resp, err := b.Client.Get(u)
	if err != nil {
		b.t.Fatalf("browser GET %s: %v", u, err)
	}
	return b.page(resp)
}

// Submit fills the first form of p that has every field in values and
// submits it. Hidden inputs keep their values.
func (b *Browser) Submit(p *Page, values map[string]string) *Page {
	b.t.Helper()
	for _, f := range p.Forms {
		ok := true
		for k := range values {
			if _, has := f.Values[k]; !has {
				ok = false
			}
		}
		if !ok {
			continue
		}
		vals := url.Values{}
		for k, v := range f.Values {
			vals[k] = append([]string(nil), v...)
		}
		for k, v := range values {
			vals.Set(k, v)
		}
		return b.Post(p, f, vals)
	}
	b.t.Fatalf("no form on %s with fields %v; page:\n%s", p.URL, keys(values), p.Body)
	return nil
}

// Post submits form f of page p with vals (what a browser does for an
// auto-submitting form, too).
func (b *Browser) Post(p *Page, f Form, vals url.Values) *Page {
	b.t.Helper()
	action, err := p.URL.Parse(f.Action)
	if err != nil {
		b.t.Fatalf("form action %q: %v", f.Action, err)
	}
	var resp *http.Response
	if strings.EqualFold(f.Method, http.MethodGet) {
		action.RawQuery = vals.Encode()
		resp, err = b.Client.Get(action.String())
	} else {
		resp, err = b.Client.PostForm(action.String(), vals)
	}
	if err != nil {
		b.t.Fatalf("browser submit to %s: %v", action, err)
	}
	return b.page(resp)
}

func (b *Browser) page(resp *http.Response) *Page {
	b.t.Helper()
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		b.t.Fatalf("reading %s: %v", resp.Request.URL, err)
	}
	p := &Page{URL: resp.Request.URL, Status: resp.StatusCode, Body: string(body)}
	if resp.StatusCode/100 == 3 {
		if loc, err := resp.Location(); err == nil {
			p.URL = loc
		}
	}
	p.Forms = parseForms(p.Body)
	return p
}

// parseForms finds forms and their input fields.
func parseForms(doc string) []Form {
	var forms []Form
	z := html.NewTokenizer(strings.NewReader(doc))
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			return forms
		}
		if tt != html.StartTagToken && tt != html.SelfClosingTagToken {
			continue
		}
		tok := z.Token()
		attr := func(name string) (string, bool) {
			for _, a := range tok.Attr {
				if a.Key == name {
					return a.Val, true
				}
			}
			return "", false
		}
		switch tok.Data {
		case "form":
			action, _ := attr("action")
			method, _ := attr("method")
			if method == "" {
				method = http.MethodGet
			}
			forms = append(forms, Form{Action: action, Method: method, Values: url.Values{}})
		case "input":
			if len(forms) == 0 {
				continue
			}
			name, ok := attr("name")
			if !ok || name == "" {
				continue
			}
			if typ, _ := attr("type"); typ == "submit" {
				continue
			}
			val, _ := attr("value")
			forms[len(forms)-1].Values.Add(name, val)
		}
	}
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
