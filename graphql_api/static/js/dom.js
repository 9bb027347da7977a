// The page's elements are fixed in index.html: look them up by id.
export const $ = (id) => document.getElementById(id);
