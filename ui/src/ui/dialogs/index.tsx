// The chat window's dialogs, one per file; this picks the one to show. Each gets the state
// and the controller, and does its side effects through the controller.

import type { JSX } from "preact";
import type { ChatState } from "../../model/chat";
import type { ChatController } from "../../model/controller";
import { BrowseRooms } from "./BrowseRooms";
import { Cluster } from "./Cluster";
import { Devices } from "./Devices";
import { NewChat } from "./NewChat";
import { NewRoom } from "./NewRoom";
import { RoomInfo } from "./RoomInfo";
import { SignOut } from "./SignOut";

export type DialogName = "new_chat" | "new_room" | "browse_rooms" | "devices" | "cluster" | "room_info" | "sign_out";

export interface DialogProps {
  state: ChatState;
  chat: ChatController;
  onClose: () => void;
}

export function Dialogs({ name, ...p }: DialogProps & { name: DialogName }): JSX.Element {
  switch (name) {
    case "new_chat":
      return <NewChat {...p} />;
    case "new_room":
      return <NewRoom {...p} />;
    case "browse_rooms":
      return <BrowseRooms {...p} />;
    case "devices":
      return <Devices {...p} />;
    case "cluster":
      return <Cluster {...p} />;
    case "room_info":
      return <RoomInfo {...p} />;
    case "sign_out":
      return <SignOut {...p} />;
  }
}
