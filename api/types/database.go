package types

import (
	"encoding/pem"
	"net"
	"strconv"

	"github.com/gravitational/trace"
)

// Database protocols.
const (
	ProtocolPostgres = "postgres"
	ProtocolMySQL    = "mysql"
)

// Database is a PostgreSQL or MySQL server reachable by the gateway.
type Database struct {
	Kind     string       `json:"kind" yaml:"kind"`
	Version  string       `json:"version" yaml:"version"`
	Metadata Metadata     `json:"metadata" yaml:"metadata"`
	Spec     DatabaseSpec `json:"spec" yaml:"spec"`
}

// DatabaseSpec is the body of a database.
type DatabaseSpec struct {
	Protocol string `json:"protocol" yaml:"protocol"`
	URI      string `json:"uri" yaml:"uri"`
	// CACert is an optional PEM bundle used to verify the database's certificate.
	CACert string `json:"ca_cert,omitempty" yaml:"ca_cert,omitempty"`
}

// NewDatabase builds and validates a database.
func NewDatabase(name string, labels map[string]string, spec DatabaseSpec) (*Database, error) {
	d := &Database{Metadata: Metadata{Name: name, Labels: labels}, Spec: spec}
	if err := d.CheckAndSetDefaults(); err != nil {
		return nil, trace.Wrap(err)
	}
	return d, nil
}

// CheckAndSetDefaults validates the database.
func (d *Database) CheckAndSetDefaults() error {
	if err := checkHeader(&d.Kind, &d.Version, &d.Metadata, KindDatabase); err != nil {
		return trace.Wrap(err)
	}
	switch d.Spec.Protocol {
	case ProtocolPostgres, ProtocolMySQL:
	case "":
		return trace.BadParameter("spec.protocol: required, one of postgres, mysql")
	default:
		return trace.BadParameter("spec.protocol: %q is not one of postgres, mysql", truncate(d.Spec.Protocol, 40))
	}
	if err := checkHostPort("spec.uri", d.Spec.URI); err != nil {
		return trace.Wrap(err)
	}
	if d.Spec.CACert != "" {
		if err := checkPEMCerts("spec.ca_cert", d.Spec.CACert); err != nil {
			return trace.Wrap(err)
		}
	}
	return nil
}

func checkHostPort(field, addr string) error {
	if addr == "" {
		return trace.BadParameter("%s: required, HOST:PORT", field)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return trace.BadParameter("%s: %q is not HOST:PORT", field, truncate(addr, 60))
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return trace.BadParameter("%s: %q has an invalid port", field, truncate(addr, 60))
	}
	return nil
}

func checkPEMCerts(field, data string) error {
	rest := []byte(data)
	found := 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return trace.BadParameter("%s: PEM block %q is not a CERTIFICATE", field, b.Type)
		}
		found++
	}
	if found == 0 {
		return trace.BadParameter("%s: no PEM CERTIFICATE block found", field)
	}
	return nil
}
