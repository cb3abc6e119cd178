package web

import (
	"encoding/json"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/gravitational/trace"

	sigilv1 "github.com/sigilhq/sigil/api/gen/sigil/v1"
)

type devicesData struct {
	Devices         []deviceRow
	HasTOTP, HasKey bool
	// KeysAvailable is false when the gateway cannot serve WebAuthn (its
	// public address is an IP address).
	KeysAvailable bool
	// KeysElsewhere is the origin where keys work, when this is not it.
	KeysElsewhere string
	// Required says sign-in asks for a device.
	Required bool
	TOTP     *totpSetup
}

type deviceRow struct {
	Name, Type      string
	Added, LastUsed time.Time
}

type totpSetup struct {
	ID, Name, Secret string
	QR               template.HTML
}

func (h *Handler) devicesPage(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	v := &view{Title: "MFA devices", Nav: "devices", Session: s}
	if name := r.URL.Query().Get("added"); name != "" {
		v.Notice = "Added MFA device “" + name + "”."
	}
	if name := r.URL.Query().Get("removed"); name != "" {
		v.Notice = "Removed MFA device “" + name + "”."
	}
	if r.URL.Query().Get("setup") != "" {
		v.Notice = "This gateway asks for a second factor when you sign in: add a device now."
	}
	h.renderDevices(w, r, s, v, nil)
}

func (h *Handler) renderDevices(w http.ResponseWriter, r *http.Request, s *consoleSession, v *view, setup *totpSetup) {
	resp, err := h.console.api.mfa.ListMFADevices(h.as(r, s), connect.NewRequest(&sigilv1.ListMFADevicesRequest{}))
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	d := &devicesData{TOTP: setup, KeysAvailable: h.console.cfg.MFA.WebAuthn() != nil, KeysElsewhere: h.keysElsewhere(r)}
	totp, key := h.console.cfg.Auth.SecondFactorAllows()
	d.Required = totp || key
	for _, dev := range resp.Msg.Devices {
		row := deviceRow{Name: dev.Name, Type: dev.Type, Added: dev.GetAddedAt().AsTime()}
		if dev.LastUsed != nil {
			row.LastUsed = dev.LastUsed.AsTime()
		}
		d.Devices = append(d.Devices, row)
		d.HasTOTP = d.HasTOTP || dev.Type == "totp"
		d.HasKey = d.HasKey || dev.Type == "webauthn"
	}
	v.Session, v.Nav, v.Data = s, "devices", d
	if v.Title == "" {
		v.Title = "MFA devices"
	}
	status := http.StatusOK
	if v.Error != "" {
		status = http.StatusBadRequest
	}
	h.renderPage(w, status, "devices", v)
}

func (h *Handler) removeDevice(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	name := r.PostForm.Get("name")
	if _, err := h.console.api.mfa.RemoveMFADevice(h.as(r, s), connect.NewRequest(&sigilv1.RemoveMFADeviceRequest{Name: name})); err != nil {
		_, msg := h.errorStatus(err)
		h.renderDevices(w, r, s, &view{Error: msg}, nil)
		return
	}
	http.Redirect(w, r, "/web/devices?removed="+url.QueryEscape(name), http.StatusSeeOther)
}

func proofOf(code, challenge string) *sigilv1.MFAProof {
	code, challenge = strings.TrimSpace(code), strings.TrimSpace(challenge)
	if code == "" && challenge == "" {
		return nil
	}
	return &sigilv1.MFAProof{TotpCode: code, ChallengeId: challenge}
}

func (h *Handler) beginTOTP(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	f := r.PostForm
	name := strings.TrimSpace(f.Get("name"))
	resp, err := h.console.api.mfa.BeginMFARegistration(h.as(r, s), connect.NewRequest(&sigilv1.BeginMFARegistrationRequest{
		Name: name, Type: "totp", Proof: proofOf(f.Get("proof_code"), f.Get("proof_challenge")),
	}))
	if err != nil {
		_, msg := h.errorStatus(err)
		h.renderDevices(w, r, s, &view{Error: msg}, nil)
		return
	}
	qr, err := qrSVG(resp.Msg.TotpUrl)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	h.renderDevices(w, r, s, &view{}, &totpSetup{ID: resp.Msg.RegistrationId, Name: name, Secret: resp.Msg.TotpSecret, QR: qr})
}

func (h *Handler) finishTOTP(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	f := r.PostForm
	resp, err := h.console.api.mfa.FinishMFARegistration(h.as(r, s), connect.NewRequest(&sigilv1.FinishMFARegistrationRequest{
		RegistrationId: f.Get("registration"), TotpCode: strings.TrimSpace(f.Get("code")),
	}))
	if err != nil {
		_, msg := h.errorStatus(err)
		h.renderDevices(w, r, s, &view{Error: msg + " Start again to get a new QR code."}, nil)
		return
	}
	http.Redirect(w, r, "/web/devices?added="+url.QueryEscape(resp.Msg.GetDevice().GetName()), http.StatusSeeOther)
}

// deviceProof creates a challenge that an existing security key approves
// before another device is added (JSON for console.js).
func (h *Handler) deviceProof(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	resp, err := h.console.api.mfa.CreateMFAChallenge(h.as(r, s), connect.NewRequest(&sigilv1.CreateMFAChallengeRequest{Target: &sigilv1.MFATarget{Kind: "mfa_device"}}))
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	c, err := h.console.cfg.MFA.Challenge(r.Context(), resp.Msg.ChallengeId)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	if len(c.WebAuthnOptions) == 0 {
		h.consoleError(w, r, s, trace.BadParameter("you have no security key to confirm with; type a code from your authenticator app instead"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"challenge_id": resp.Msg.ChallengeId, "options": string(c.WebAuthnOptions)})
}

func (h *Handler) beginWebAuthn(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	body, err := readJSONBody(w, r)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	var in struct {
		Name           string `json:"name"`
		ProofCode      string `json:"proof_code"`
		ProofChallenge string `json:"proof_challenge"`
	}
	if err := json.Unmarshal(body, &in); err != nil {
		h.consoleError(w, r, s, trace.BadParameter("malformed request"))
		return
	}
	resp, err := h.console.api.mfa.BeginMFARegistration(h.as(r, s), connect.NewRequest(&sigilv1.BeginMFARegistrationRequest{
		Name: strings.TrimSpace(in.Name), Type: "webauthn", Proof: proofOf(in.ProofCode, in.ProofChallenge),
	}))
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	reg, err := h.console.cfg.MFA.Registration(r.Context(), s.User, resp.Msg.RegistrationId)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"registration_id": resp.Msg.RegistrationId, "options": string(reg.WebAuthnOptions)})
}

func (h *Handler) finishWebAuthn(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	body, err := readJSONBody(w, r)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	var in struct {
		RegistrationID string          `json:"registration_id"`
		Response       json.RawMessage `json:"response"`
	}
	if err := json.Unmarshal(body, &in); err != nil || len(in.Response) == 0 {
		h.consoleError(w, r, s, trace.BadParameter("malformed request"))
		return
	}
	resp, err := h.console.api.mfa.FinishMFARegistration(h.as(r, s), connect.NewRequest(&sigilv1.FinishMFARegistrationRequest{
		RegistrationId: in.RegistrationID, WebauthnResponse: in.Response,
	}))
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"name": resp.Msg.GetDevice().GetName()})
}

type registerData struct {
	ID, Name, User, Options string
	Done                    bool
}

// registerPage registers a security key for a registration "sigil mfa
// add --type webauthn" started; only its user, signed in, can finish it.
func (h *Handler) registerPage(w http.ResponseWriter, r *http.Request, s *consoleSession) {
	id := r.PathValue("id")
	reg, err := h.console.cfg.MFA.Registration(r.Context(), s.User, id)
	if err != nil {
		h.consoleError(w, r, s, err)
		return
	}
	if reg.Type != "webauthn" {
		h.consoleError(w, r, s, trace.BadParameter("this registration is not for a security key"))
		return
	}
	h.renderPage(w, http.StatusOK, "register", &view{Title: "Register a security key", Nav: "devices", Session: s, Data: &registerData{
		ID: id, Name: reg.Name, User: reg.User, Options: string(reg.WebAuthnOptions), Done: reg.Done(),
	}})
}
