// Package web serves the web console pages. Today: the signup page that
// completes a signup link in a browser. Pages are html/template files
// embedded in the binary; there is no JavaScript build step.
package web
