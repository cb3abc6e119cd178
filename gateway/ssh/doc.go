// Package ssh is the gateway's SSH engine. It terminates the client's SSH
// connection (routed here by the mux on the "SSH-" banner), proves who the
// client is from a Sigil SSH user certificate, authorizes the login on a
// node through gateway/session (locks, policy, durable audit), and opens a
// second SSH connection to the node, an unmodified OpenSSH server, with a
// fresh one-minute certificate for the login signed by the SSH user CA,
// verifying the node's host certificate against the SSH host CA.
//
// Clients name the node in one of two ways:
//   - as the user name "LOGIN@NODE" (sigil ssh; ssh -p PORT LOGIN@NODE@GATEWAY);
//   - through the gateway as a jump host (ssh -J, ProxyCommand "sigil proxy
//     ssh"): the direct-tcpip channel to NODE:PORT is served by an inner SSH
//     server presenting a host certificate for NODE, so the same checks,
//     audit and recording apply.
//
// Interactive (pty) channels are recorded in asciicast v2 (audit/recording);
// exec and subsystem requests become ssh.exec events. Port and agent
// forwarding are refused unless a role option allows them.
package ssh
