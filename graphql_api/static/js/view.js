// What is on screen, shared by the views.
export const view = {
  routeSeq: 0, // bumped on each navigation so late answers of an old view are dropped
  group: null, // the group on screen, with its image paging: { ...group, cursor, ids }
};
