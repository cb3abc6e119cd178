package testenv

import (
	"encoding/base64"
	"os"
	"path/filepath"
)

// AddVirtualAuthenticator gives the tab's browser context a DevTools
// virtual security key (CTAP2 over USB) that approves every request as
// if touched, so pages can run WebAuthn ceremonies headless.
func (tab *Tab) AddVirtualAuthenticator() string {
	tab.c.t.Helper()
	if err := tab.c.call(tab.session, "WebAuthn.enable", map[string]any{"enableUI": false}, nil); err != nil {
		tab.c.t.Fatal(err)
	}
	var res struct {
		AuthenticatorID string `json:"authenticatorId"`
	}
	err := tab.c.call(tab.session, "WebAuthn.addVirtualAuthenticator", map[string]any{"options": map[string]any{
		"protocol":                    "ctap2",
		"transport":                   "usb",
		"hasResidentKey":              false,
		"hasUserVerification":         true,
		"isUserVerified":              true,
		"automaticPresenceSimulation": true,
	}}, &res)
	if err != nil {
		tab.c.t.Fatal(err)
	}
	return res.AuthenticatorID
}

// Credentials counts the virtual authenticator's credentials.
func (tab *Tab) Credentials(authenticatorID string) int {
	tab.c.t.Helper()
	var res struct {
		Credentials []map[string]any `json:"credentials"`
	}
	if err := tab.c.call(tab.session, "WebAuthn.getCredentials", map[string]any{"authenticatorId": authenticatorID}, &res); err != nil {
		tab.c.t.Fatal(err)
	}
	return len(res.Credentials)
}

// SetViewport sizes the page like a screen of width x height CSS pixels
// (mobile: a phone, with its zoom and touch behaviour).
func (tab *Tab) SetViewport(width, height int, mobile bool) {
	tab.c.t.Helper()
	scale := 1.0
	if mobile {
		scale = 2
	}
	if err := tab.c.call(tab.session, "Emulation.setDeviceMetricsOverride", map[string]any{
		"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile,
	}, nil); err != nil {
		tab.c.t.Fatal(err)
	}
}

// Screenshot saves the whole page (not only the viewport) as a PNG.
func (tab *Tab) Screenshot(path string) {
	tab.c.t.Helper()
	var metrics struct {
		CSSContentSize struct {
			Width  float64 `json:"width"`
			Height float64 `json:"height"`
		} `json:"cssContentSize"`
		CSSLayoutViewport struct {
			ClientWidth int `json:"clientWidth"`
		} `json:"cssLayoutViewport"`
	}
	if err := tab.c.call(tab.session, "Page.getLayoutMetrics", nil, &metrics); err != nil {
		tab.c.t.Fatal(err)
	}
	var shot struct {
		Data string `json:"data"`
	}
	err := tab.c.call(tab.session, "Page.captureScreenshot", map[string]any{
		"format":                "png",
		"captureBeyondViewport": true,
		"clip": map[string]any{
			"x": 0, "y": 0, "scale": 1,
			"width":  float64(metrics.CSSLayoutViewport.ClientWidth),
			"height": metrics.CSSContentSize.Height,
		},
	}, &shot)
	if err != nil {
		tab.c.t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		tab.c.t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tab.c.t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		tab.c.t.Fatal(err)
	}
}
