import { mount } from 'svelte';
import './app.css';
import App from './App.svelte';
import { Connection } from './lib/connection.svelte.js';
import { Wizard } from './wizard/wizard.svelte.js';

// The token from the URL the server printed: the server has answered this load with a
// cookie, so drop it from the address bar (and from history) and keep it only for the
// WebSocket handshake of this page, in case the cookie could not be set.
const params = new URLSearchParams(location.search);
const token = params.get('token');
if (token) {
  params.delete('token');
  const search = params.toString();
  history.replaceState(null, '', `${location.pathname}${search ? `?${search}` : ''}${location.hash}`);
}

const theme = localStorage.getItem('trainboard.theme');
if (theme === 'light' || theme === 'dark') document.documentElement.dataset.theme = theme;

const conn = new Connection({ token });
const wizard = new Wizard();
conn.start();
// For tests and the curious: the live state, read-only by convention.
window.trainboard = { conn, wizard };

mount(App, { target: document.getElementById('app'), props: { conn, wizard } });
