// Entry point of a chat window (every window, main or extra device, runs this same page).
import { render } from "preact";
import { App } from "./ui/App";

const root = document.getElementById("app");
if (root) render(<App />, root);
