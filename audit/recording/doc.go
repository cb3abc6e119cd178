// Package recording writes and reads SSH session recordings in the
// asciicast v2 format (https://docs.asciinema.org/manual/asciicast/v2/):
// one JSON header line, then one [time, code, data] line per terminal
// output ("o"), input ("i"), resize ("r") or marker ("m") event. The
// gateway records interactive sessions with a Recorder that never blocks
// the session on a slow disk; sigil play and the API read them back.
package recording
