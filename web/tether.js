// tether.js
